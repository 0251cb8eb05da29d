"""python -m cluster run | units: start this host's nodes (what `make run` calls), or write their systemd units.

``python -m cluster`` with no command, or with options only, means ``run``.
"""

import sys

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["units"]:
        from .units import main
        args = args[1:]
    else:
        from .run import main
        if args[:1] == ["run"]:
            args = args[1:]
    sys.exit(main(args))
