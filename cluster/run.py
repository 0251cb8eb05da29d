"""`make run`: start the whole cluster on one box, print its URL, stop it all on Ctrl-C.

Each component is a `python -m <package> serve --node NAME` process per node in
the config (hashproxy: one `serve`, which forks its own workers), started in
dependency order and waited for on /healthz. Children run in their own sessions,
so the terminal's Ctrl-C reaches only this supervisor, which then stops them in
reverse order, each by PID (SIGTERM, then SIGKILL after a timeout). If any child
dies, the whole cluster is stopped and the exit code says so.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import procs
from .config import ENV_VAR, Config, ConfigError, dump_toml, ensure_secrets, from_dict, load_dict
from .seaweed import Seaweed, start_seaweed


@dataclass(frozen=True)
class Component:
    package: str          # python -m <package> serve ...
    per_node: bool = True  # one process per node in config.<package>.nodes


#: start order; stop order is the reverse
COMPONENTS = (Component("magickd"), Component("ypfs"), Component("ypws"), Component("hashproxy", per_node=False))


class Cluster:
    def __init__(self, tree: dict, storage: str, log_dir: Path):
        self.tree = tree
        self.storage = storage
        self.log_dir = log_dir
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.seaweed: Seaweed | None = None
        self.cfg: Config | None = None

    def _effective_config(self) -> tuple[Config, Path]:
        tree = self.tree
        data_dir = Path(tree["cluster"]["data_dir"]).resolve()
        tree["cluster"]["data_dir"] = str(data_dir)
        if self.storage == "s3":
            self.seaweed = start_seaweed(data_dir / "seaweed")
            tree["storage"]["backend"] = "s3"
            tree["storage"]["s3"].update(endpoint=self.seaweed.endpoint, access_key=self.seaweed.access_key,
                                         secret_key=self.seaweed.secret_key)
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
        for comp in COMPONENTS:
            if comp.per_node:
                targets = [(n.name, ["--node", n.name], n.url) for n in getattr(cfg, comp.package).nodes]
            else:
                targets = [(comp.package, [], f"http://{cfg.hashproxy.host}:{cfg.hashproxy.port}")]
            started = []
            for name, args, url in targets:
                argv = procs.python_module(comp.package, "serve", *args)
                proc = procs.start(argv, log=self.log_dir / f"{name}.log", env={ENV_VAR: str(path)})
                self.children.append((name, proc))
                started.append((name, proc, url))
            for name, proc, url in started:
                # ypws is ready once it applied the purge log (its cache is trusted from then on)
                procs.wait_http(f"{url}/{'readyz' if comp.package == 'ypws' else 'healthz'}", timeout=60, proc=proc)
                print(f"  {name:<10} {url}  (log: {self.log_dir / (name + '.log')})", flush=True)
        return cfg

    def watch(self) -> int:
        while True:
            for name, proc in self.children:
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping the cluster", file=sys.stderr)
                    return 1
            time.sleep(0.5)

    def stop(self) -> None:
        for name, proc in reversed(self.children):
            procs.stop(proc, timeout=10)
        self.children.clear()
        if self.seaweed:
            self.seaweed.stop()
            self.seaweed = None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cluster run", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help=f"TOML file over the defaults (else ${ENV_VAR})")
    ap.add_argument("--storage", choices=["config", "local", "s3"], default="config",
                    help="local: embedded store; s3: start a local SeaweedFS and use the S3 backend")
    args = ap.parse_args(argv)
    import os

    try:
        tree = load_dict(args.config or os.environ.get(ENV_VAR))
        if args.storage == "local":
            tree["storage"]["backend"] = "local"
        storage = "s3" if args.storage == "s3" else "config"
        from_dict(tree)  # validate before starting anything
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    log_dir = Path(tree["cluster"]["data_dir"]).resolve() / "logs"
    cluster = Cluster(tree, storage, log_dir)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # explicitly: a parent may have started us with SIGINT ignored
    code = 0
    try:
        print(f"Starting the cluster (storage: {tree['storage']['backend'] if storage != 's3' else 's3 via local SeaweedFS'})",
              flush=True)
        cfg = cluster.start()
        print(f"\nCluster is up: {cfg.public_url}\n"
              f"  admin token: {cfg.cluster.admin_token}\n"
              f"  add a user:  YUPOO_CONFIG={cfg.data_dir / 'run' / 'cluster.toml'} .venv/bin/python -m ypfs user add alice\n"
              f"Ctrl-C stops everything.", flush=True)
        code = cluster.watch()
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    except Exception as exc:  # a child failed to start: say which, stop the rest
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    finally:
        cluster.stop()
    return code
