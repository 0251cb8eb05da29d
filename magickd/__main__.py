"""python -m magickd: serve a render node, or run the admin commands over the whole pool.

    python -m magickd serve --node magickd1
    python -m magickd rerender --size medium --all [--since 2025-01-01] [--concurrency 8] [--dry-run]
    python -m magickd verify [--user alice] [--repair]

Configuration comes from $YUPOO_CONFIG (or --config) over cluster/defaults.toml.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from cluster.config import ENV_VAR, ConfigError, load


def _since(text: str) -> float:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD or an ISO timestamp)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m magickd", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help=f"TOML file over the defaults (else ${ENV_VAR})")
    sub = ap.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run one render node (gunicorn pre-fork pool)")
    s.add_argument("--node", required=True, help="name of a [[magickd.nodes]] entry")

    r = sub.add_parser("rerender", help="re-render one size of many photos across the pool, resumably")
    r.add_argument("--size", required=True, help="size profile name, e.g. medium")
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="only this user's photos")
    who.add_argument("--all", action="store_true", help="every user's photos")
    r.add_argument("--since", type=_since, help="only photos uploaded on or after this date (UTC)")
    r.add_argument("--concurrency", type=int, default=0, help="photos in flight (default: workers of all nodes)")
    r.add_argument("--dry-run", action="store_true", help="count what would be re-rendered, render nothing")
    r.add_argument("--force", action="store_true", help="re-render even where the current version exists")
    r.add_argument("--restart", action="store_true", help="ignore the checkpoint and start from the first photo")
    r.add_argument("--no-purge", action="store_true", help="do not purge the cache nodes")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")

    v = sub.add_parser("verify", help="check every photo has every size and that each decodes")
    v.add_argument("--user", help="only this user's photos")
    v.add_argument("--repair", action="store_true", help="render what is missing, re-render what is broken")
    v.add_argument("--concurrency", type=int, default=0, help="photos checked at once (default: workers of all nodes)")
    v.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from .server import serve

        try:
            cfg.node("magickd", args.node)
        except ConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
        serve(cfg, args.node)
        return 0

    from cluster.profiles import by_name
    from storage import open_store
    from storage.purge import Purger

    from .client import RenderClient

    store = open_store(cfg.storage, cfg.local_root)
    sizes = by_name(cfg.sizes)
    pool_width = cfg.magickd.effective_workers * len(cfg.magickd.nodes)
    concurrency = args.concurrency or pool_width

    def purger(origin: str) -> Purger:
        return Purger.from_sections(cfg.purge, cfg.ypws.nodes, cfg.cluster.admin_token, cfg.public_url, store, origin)

    def client() -> RenderClient:
        return RenderClient(cfg.magickd, cfg.cluster.admin_token)

    if args.command == "rerender":
        from .rerender import Rerenderer, RerenderJob, checkpoint_dir, format_summary

        job = RerenderJob(size=args.size, user=None if args.all else args.user, since=args.since,
                          concurrency=concurrency, force=args.force, purge=not args.no_purge)
        runner = Rerenderer(sizes, checkpoint_dir(cfg.data_dir), store, client(),
                            None if args.no_purge else purger("magickd-rerender"), progress=not args.no_progress)
        try:
            summary = runner.run(job, restart=args.restart, dry_run=args.dry_run)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(format_summary(summary, job))
        if summary.interrupted:
            return 130
        return 1 if summary.failures else 0

    from .verify import Verifier, format_reports

    verifier = Verifier(sizes, store, client() if args.repair else None, purger("magickd-verify") if args.repair else None)
    reports = verifier.run(user=args.user, repair=args.repair, concurrency=concurrency, progress=not args.no_progress)
    text, code = format_reports(reports, args.repair)
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
