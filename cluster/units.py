"""`python -m cluster units`: one systemd unit per node that belongs on this host.

The production alternative to `cluster run`: systemd supervises each node
(``Restart=always`` with ``RestartSec`` doubling up to ``RestartMaxDelaySec``;
``StartLimitIntervalSec``/``StartLimitBurst``
from ``[supervise]`` give up on a crash loop) and ``KillMode=mixed`` sends SIGTERM to
the node's master, which stops its workers gracefully, then SIGKILL to whatever of
the unit is left after ``TimeoutStopSec``. Nodes are chosen as `cluster run` chooses
them (``cluster.hosts``); ``--host ADDR`` writes the units of another host. Every
unit runs as a dedicated unprivileged user (``--user``, default ``yupoo``), with the
config named by an absolute path that must be the same on every host.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
from pathlib import Path

from .config import ENV_VAR, Config, ConfigError, SuperviseSection, check_secrets, load
from .hosts import Target, add_selection_args, select

UNIT_PREFIX = "yupoo-"
#: the first systemd with RestartSteps and RestartMaxDelaySec (an exponential restart delay)
BACKOFF_SYSTEMD = 254
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def unit_name(target: Target) -> str:
    return f"{UNIT_PREFIX}{target.name}.service"


def _quote(word: str) -> str:
    """One word of a unit-file command line or setting: %-specifiers escaped, quoted when needed."""
    word = word.replace("%", "%%")
    if re.search(r'[\s"\'\\;$]', word):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def restart_steps(delay: float, delay_max: float) -> int:
    """systemd's RestartSteps for a delay that doubles from ``delay`` until ``delay_max``."""
    return max(0, math.ceil(math.log2(delay_max / delay)))


def _backoff(s: SuperviseSection, systemd: int) -> list[str]:
    """The delay doubles after each death up to restart_delay_max, as `cluster run` does; systemd
    has the keys from version 254 (older ones warn of unknown keys and keep RestartSec)."""
    if systemd < BACKOFF_SYSTEMD:
        return []
    return [f"RestartSteps={restart_steps(s.restart_delay, s.restart_delay_max)}",
            f"RestartMaxDelaySec={s.restart_delay_max:g}"]


def local_systemd_version() -> int:
    """This machine's systemd version (0 if there is none)."""
    try:
        out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    m = re.match(r"systemd (\d+)", out)
    return int(m.group(1)) if m else 0


def render_unit(cfg: Config, target: Target, *, config_path: Path, python: str, user: str, workdir: Path,
                systemd: int = BACKOFF_SYSTEMD) -> str:
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
        *_backoff(s, systemd),
        "KillMode=mixed",
        f"TimeoutStopSec={s.stop_timeout:g}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def write_units(cfg: Config, targets: list[Target], out: Path, *, config_path: Path, python: str, user: str,
                workdir: Path, systemd: int = BACKOFF_SYSTEMD) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for t in targets:
        path = out / unit_name(t)
        path.write_text(render_unit(cfg, t, config_path=config_path, python=python, user=user, workdir=workdir,
                                    systemd=systemd))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cluster units", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help=f"the cluster's TOML file (else ${ENV_VAR}); its absolute path goes into the units")
    ap.add_argument("--out", default="", help="folder for the unit files (default: {data_dir}/units)")
    ap.add_argument("--user", default="yupoo", help="the unprivileged user the nodes run as (default: yupoo)")
    ap.add_argument("--host", action="append", default=[], metavar="ADDR",
                    help="write the units of the host with this address instead of this machine's (repeatable)")
    ap.add_argument("--systemd", type=int, default=None, metavar="VERSION",
                    help="the hosts' systemd version (default: this machine's); from 254 the restart delay "
                         "doubles up to supervise.restart_delay_max, as under `cluster run`")
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
    systemd = args.systemd if args.systemd is not None else local_systemd_version()
    written = write_units(cfg, chosen, out, config_path=config_path, python=sys.executable, user=args.user,
                          workdir=Path.cwd(), systemd=systemd)
    if systemd < BACKOFF_SYSTEMD:
        print(f"note: systemd {systemd or '(none found)'} restarts a node every {cfg.supervise.restart_delay:g}s "
              f"(no doubling: that needs systemd {BACKOFF_SYSTEMD}; --systemd says the hosts' version)", file=sys.stderr)
    for path in written:
        print(path)
    print(f"\ninstall: sudo cp {out}/{UNIT_PREFIX}*.service /etc/systemd/system/ && sudo systemctl daemon-reload"
          f" && sudo systemctl enable --now {' '.join(p.name for p in written)}", file=sys.stderr)
    return 0
