"""python -m cluster run | units | check: start this host's nodes (what `make run` calls), write their systemd
units, or only validate the config.

``python -m cluster`` with no command, or with options only, means ``run``.
"""

import sys

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["units"]:
        from .units import main
        args = args[1:]
    elif args[:1] == ["check"]:
        from .check import main
        args = args[1:]
    else:
        from .run import main
        if args[:1] == ["run"]:
            args = args[1:]
    sys.exit(main(args))
