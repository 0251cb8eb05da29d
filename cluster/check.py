"""`python -m cluster check [--config F]`: validate a config the way `cluster run` does, start nothing.

Every section checks its own values as the config loads (cluster/config.py), then the
checks that span sections (node lists, addresses, the timeout budget, shared secrets
across hosts) run; the first problem is printed naming its key, exit status 2.
Nothing is written: generated secrets are not created, and no secret is printed.
"""

from __future__ import annotations

import argparse
import os
import sys

from .config import ENV_VAR, ConfigError, check_secrets, load


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cluster check", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help=f"TOML file over the defaults (else ${ENV_VAR})")
    args = ap.parse_args(argv)
    path = args.config or os.environ.get(ENV_VAR) or None
    try:
        cfg = load(path, with_secrets=False)
        check_secrets(cfg)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    print(f"config OK: {path or 'defaults only'}")
    return 0
