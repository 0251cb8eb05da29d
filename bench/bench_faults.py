"""Fault soak: the fault-injection suite (tests/test_faults.py) with every scenario repeated.

`make test` runs each scenario once per storage backend; this runs them ROUNDS times
in a row on one cluster per backend (kill -9 of every process kind, SeaweedFS, torn
cache entries, a full cache disk), with the same checks after each, and prints the
suite's table. Figures go to bench/results/latest.json under "faults".
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.results import record

ROUNDS = 5
REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/test_faults.py"],
                         cwd=REPO, env={**os.environ, "YUPOO_FAULT_ROUNDS": str(ROUNDS)},
                         capture_output=True, text=True, timeout=3600)
    print(out.stdout[-20000:])
    totals = re.findall(r"acked (\d+), lost (\d+), deleted (\d+)", out.stdout)
    record("faults", {"rounds": ROUNDS, "passed": out.returncode == 0, "seconds": round(time.monotonic() - t0),
                      "backends": [{"acked": int(a), "lost": int(b), "deleted": int(c)} for a, b, c in totals]})
    if out.returncode != 0:
        raise RuntimeError(f"the fault soak failed:\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}")


if __name__ == "__main__":
    main()
