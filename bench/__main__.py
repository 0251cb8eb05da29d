"""make bench: run every benchmark module (bench/bench_*.py, each with a main()) in turn.

`python -m bench` runs them all; `python -m bench ypfs magickd` runs those named.
Each prints its table and merges its figures into bench/results/latest.json.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    chosen = [n for n in names if not argv or n in argv]
    failed = []
    for name in chosen:
        print(f"\n=== bench {name} ===", flush=True)
        t0 = time.monotonic()
        try:
            importlib.import_module(f"bench.bench_{name}").main()
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"=== {name}: {time.monotonic() - t0:.0f}s ===", flush=True)
    if failed:
        print(f"failed benchmarks: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
