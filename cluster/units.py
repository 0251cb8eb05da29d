"""`python -m cluster units`: one systemd unit per node that belongs on this host.

The production alternative to `cluster run`: systemd supervises each node
(``Restart=always`` with ``RestartSec``; ``StartLimitIntervalSec``/``StartLimitBurst``
from ``[supervise]`` give up on a crash loop) and ``KillMode=mixed`` sends SIGTERM to
the node's master, which stops its workers gracefully, then SIGKILL to whatever of
the unit is left after ``TimeoutStopSec``. Nodes are chosen as `cluster run` chooses
them (``cluster.hosts``); ``--host ADDR`` writes the units of another host. Every
unit runs as a dedicated unprivileged user (``--user``, default ``yupoo``), with the
config named by an absolute path that must be the same on every host.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from .config import ENV_VAR, Config, ConfigError, check_secrets, load
from .hosts import Target, add_selection_args, select

UNIT_PREFIX = "yupoo-"
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def unit_name(target: Target) -> str:
    return f"{UNIT_PREFIX}{target.name}.service"


def _quote(word: str) -> str:
    """One word of a unit-file command line or setting: %-specifiers escaped, quoted when needed."""
    word = word.replace("%", "%%")
    if re.search(r'[\s"\'\\;$]', word):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def render_unit(cfg: Config, target: Target, *, config_path: Path, python: str, user: str, workdir: Path) -> str:
    s = cfg.supervise
    exec_start = " ".join(_quote(w) for w in [python, "-m", target.role, *target.serve_args])
    return "\n".join([
        f"# Written by `python -m cluster units` from {config_path}; regenerate rather than edit.",
        "[Unit]",
        f"Description=yupoo {target.role} node {target.name} ({target.host}:{target.port})",
        "Wants=network-online.target",
        "After=network-online.target",
        f"StartLimitIntervalSec={s.interval:g}",
        f"StartLimitBurst={s.burst}",
        "",
        "[Service]",
        "Type=simple",
        f"User={user}",
        f"WorkingDirectory={_quote(str(workdir))}",
        f"Environment={_quote(f'{ENV_VAR}={config_path}')}",
        f"ExecStart={exec_start}",
        "Restart=always",
        f"RestartSec={s.restart_delay:g}",
        "KillMode=mixed",
        f"TimeoutStopSec={s.stop_timeout:g}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def write_units(cfg: Config, targets: list[Target], out: Path, *, config_path: Path, python: str, user: str,
                workdir: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for t in targets:
        path = out / unit_name(t)
        path.write_text(render_unit(cfg, t, config_path=config_path, python=python, user=user, workdir=workdir))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cluster units", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help=f"the cluster's TOML file (else ${ENV_VAR}); its absolute path goes into the units")
    ap.add_argument("--out", default="", help="folder for the unit files (default: {data_dir}/units)")
    ap.add_argument("--user", default="yupoo", help="the unprivileged user the nodes run as (default: yupoo)")
    ap.add_argument("--host", action="append", default=[], metavar="ADDR",
                    help="write the units of the host with this address instead of this machine's (repeatable)")
    add_selection_args(ap)
    args = ap.parse_args(argv)
    source = args.config or os.environ.get(ENV_VAR)
    try:
        if not source:
            raise ConfigError(f"--config (or ${ENV_VAR}) is needed: the units name the config file every node reads")
        if not _USER.fullmatch(args.user):
            raise ConfigError(f"--user: not a valid user name: {args.user!r}")
        config_path = Path(source).resolve()
        cfg = load(config_path, with_secrets=False)
        check_secrets(cfg)  # a multi-host cluster without shared secrets is refused here too
        chosen = select(cfg, nodes=args.node, roles=args.role, local=set(args.host) if args.host else None)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else cfg.data_dir / "units"
    written = write_units(cfg, chosen, out, config_path=config_path, python=sys.executable, user=args.user,
                          workdir=Path.cwd())
    for path in written:
        print(path)
    print(f"\ninstall: sudo cp {out}/{UNIT_PREFIX}*.service /etc/systemd/system/ && sudo systemctl daemon-reload"
          f" && sudo systemctl enable --now {' '.join(p.name for p in written)}", file=sys.stderr)
    return 0
