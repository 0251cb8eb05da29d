"""python -m cluster run: the whole cluster on one box (what `make run` calls)."""

import sys

from .run import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["run"]:
        args = args[1:]
    sys.exit(main(args))
