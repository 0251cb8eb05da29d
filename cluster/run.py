"""`python -m cluster run`: start this machine's part of the cluster and keep it running.

One config file serves every host: the nodes that belong on this machine are chosen
by their addresses (see ``cluster.hosts``; ``--node`` / ``--role`` choose by hand), so
on one box with the defaults (everything on 127.0.0.1) it starts the whole cluster,
which is what `make run` does. Each node is a ``python -m <package> serve --node NAME``
process (hashproxy: one ``serve``, which forks its own workers), started in dependency
order and waited for on /healthz, then supervised (``cluster.supervise``): a node that
dies is restarted with back-off, one that keeps crashing is given up on while the rest
keep serving. Children run in their own sessions, so the terminal's Ctrl-C reaches only
this process, which then stops them in reverse order, each by PID (SIGTERM, then SIGKILL
after a timeout). The exit code is 0 after a signal, 1 when every node was given up on.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import procs
from .config import ENV_VAR, Config, ConfigError, check_secrets, dump_toml, ensure_secrets, from_dict, host_addresses
from .config import load_dict, secrets_source
from .hosts import Target, add_selection_args, select
from .seaweed import Seaweed, start_seaweed
from .supervise import GIVEN_UP, RUNNING, Child, Supervisor

START_TIMEOUT = 60.0  # seconds a node may take to answer /healthz at start-up before we move on


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Cluster:
    def __init__(self, tree: dict, storage: str, log_dir: Path, chosen: list[Target]):
        self.tree = tree
        self.storage = storage
        self.log_dir = log_dir
        self.chosen = chosen
        self.seaweed: Seaweed | None = None
        self.cfg: Config | None = None
        self.supervisor: Supervisor | None = None
        self.secrets_at = ""

    def _effective_config(self) -> tuple[Config, Path]:
        tree = self.tree
        data_dir = Path(tree["cluster"]["data_dir"]).resolve()
        tree["cluster"]["data_dir"] = str(data_dir)
        if tree["cluster"]["secrets_file"]:
            tree["cluster"]["secrets_file"] = str(Path(tree["cluster"]["secrets_file"]).resolve())
        if self.storage == "s3":
            self.seaweed = start_seaweed(data_dir / "seaweed")
            tree["storage"]["backend"] = "s3"
            tree["storage"]["s3"].update(endpoint=self.seaweed.endpoint, access_key=self.seaweed.access_key,
                                         secret_key=self.seaweed.secret_key)
        self.secrets_at = secrets_source(from_dict(tree))
        cfg = ensure_secrets(from_dict(tree))
        run_dir = data_dir / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "cluster.toml"
        path.write_text(dump_toml(tree))
        return cfg, path

    def start(self) -> Config:
        cfg, path = self._effective_config()
        self.cfg = cfg
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.supervisor = Supervisor(cfg.supervise)
        # one role at a time, in dependency order; the nodes of a role start together
        for role in dict.fromkeys(t.role for t in self.chosen):
            group = []
            for t in (t for t in self.chosen if t.role == role):
                child = self.supervisor.add(Child(
                    t.name, procs.python_module(t.role, *t.serve_args), env={ENV_VAR: str(path)},
                    log=self.log_dir / f"{t.name}.log"))
                group.append((t, child))
            self._wait_healthy(group)
        return cfg

    def _wait_healthy(self, group: list[tuple[Target, Child]]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        waiting = list(group)
        while waiting and time.monotonic() < deadline:
            self.supervisor.step()
            for t, child in list(waiting):
                if child.state == GIVEN_UP:
                    waiting.remove((t, child))
                elif child.state == RUNNING and _healthy(t.ready_url):
                    waiting.remove((t, child))
                    print(f"  {t.name:<10} http://{t.host}:{t.port}  (log: {child.log})", flush=True)
            time.sleep(0.1)
        for t, child in waiting:
            print(f"  {t.name:<10} NOT answering {t.ready_url} after {START_TIMEOUT:g} s; still supervised "
                  f"(log: {child.log})", file=sys.stderr, flush=True)

    def watch(self) -> int:
        return self.supervisor.run()

    def stop(self) -> None:
        if self.supervisor:
            self.supervisor.stop_all()
        if self.seaweed:
            self.seaweed.stop()
            self.seaweed = None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cluster run", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help=f"TOML file over the defaults (else ${ENV_VAR})")
    ap.add_argument("--storage", choices=["config", "local", "s3"], default="config",
                    help="local: embedded store; s3: start a local SeaweedFS and use the S3 backend (one box only)")
    add_selection_args(ap)
    args = ap.parse_args(argv)

    try:
        tree = load_dict(args.config or os.environ.get(ENV_VAR))
        if args.storage == "local":
            tree["storage"]["backend"] = "local"
        storage = "s3" if args.storage == "s3" else "config"
        cfg = from_dict(tree)  # validate before starting anything
        if storage == "s3" and len(host_addresses(cfg)) > 1:
            raise ConfigError("--storage s3 starts a SeaweedFS on 127.0.0.1 for one box; the nodes span several "
                              "hosts: run SeaweedFS yourself and set [storage.s3] (README: Across hosts)")
        check_secrets(cfg)  # a multi-host cluster without shared secrets is refused before anything starts
        chosen = select(cfg, nodes=args.node, roles=args.role)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    log_dir = Path(tree["cluster"]["data_dir"]).resolve() / "logs"
    cluster = Cluster(tree, storage, log_dir, chosen)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # explicitly: a parent may have started us with SIGINT ignored
    code = 0
    try:
        print(f"Starting {', '.join(t.name for t in chosen)} "
              f"(storage: {tree['storage']['backend'] if storage != 's3' else 's3 via local SeaweedFS'})", flush=True)
        cfg = cluster.start()
        print(f"\nCluster is up: {cfg.public_url}\n"
              f"  secrets (admin token, URL key): {cluster.secrets_at}\n"
              f"  add a user:  YUPOO_CONFIG={cfg.data_dir / 'run' / 'cluster.toml'} .venv/bin/python -m ypfs user add alice\n"
              f"Ctrl-C stops everything.", flush=True)
        code = cluster.watch()
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    except Exception as exc:  # e.g. SeaweedFS failed to start: say so, stop the rest
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    finally:
        cluster.stop()
    return code
