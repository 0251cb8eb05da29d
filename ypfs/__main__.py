"""ypfs command line.

    python -m ypfs serve --node NAME        run the upload server (gunicorn) for one node
    python -m ypfs user add NAME            create a user; prints its upload token once
    python -m ypfs user token NAME          issue another token for a user (prints it once)
    python -m ypfs user revoke NAME         revoke every token of a user
    python -m ypfs user list                list users
    python -m ypfs photo delete USER ID     take a photo down (admin): storage, then the caches
    python -m ypfs gc [--grace-minutes N] [--dry-run]
                                            remove objects no photo record reaches (crash leftovers)
    python -m ypfs placeholders [--user U]  give photos stored before placeholders their ThumbHash and colour
"""

from __future__ import annotations

import argparse
import sys

from cluster.config import ConfigError, load
from storage import StorageError


def serve(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    node = cfg.node("ypfs", args.node)
    from cluster.web import prepare_metrics_dir, serve as run

    prepare_metrics_dir(str(cfg.data_dir / "metrics" / node.name))  # before prometheus_client is imported

    def load_app():
        import pyvips

        pyvips.cache_set_max(0)  # validation decodes each file once: nothing to cache
        # a strict decode is sequential (one entropy stream): more threads only add hand-offs,
        # and the upload's other work (the original's PUT) has the other core
        pyvips.concurrency_set(1)
        from cluster.profiles import eager_sizes
        from storage.purge import Purger
        from magickd.client import RenderClient
        from storage import open_store

        from . import metrics
        from .app import create_app
        from .notify import RenderNotifier

        notifier = RenderNotifier(RenderClient(cfg.magickd, cfg.cluster.admin_token), cfg.ypfs.render_retries,
                                  eager_sizes(cfg.sizes),
                                  on_outcome=lambda o: metrics.RENDER_REQUESTS.labels(outcome=o).inc())
        store = open_store(cfg.storage, cfg.local_root)
        purger = Purger.from_sections(cfg.purge, cfg.ypws.nodes, cfg.cluster.admin_token, cfg.public_url, store,
                                      node.name)
        return create_app(cfg, store, node.name, notifier=notifier, purger=purger)

    run(load_app, node.bind, cfg.ypfs.workers, timeout=cfg.ypfs.timeout, name=f"ypfs-{node.name}")
    return 0


def user(args: argparse.Namespace) -> int:
    from storage import NotFound, open_store
    from storage.keys import InvalidName, parse_user_key, user_key, user_prefix, valid_user
    from storage.records import UserRecord

    cfg = load(args.config)
    store = open_store(cfg.storage, cfg.local_root)
    if args.action == "list":
        for key in store.list(user_prefix()):
            try:
                print(parse_user_key(key))
            except InvalidName:
                continue  # not a user record of ours
        return 0
    try:
        name = valid_user(args.name or "")
    except InvalidName:
        print("user names are 1-32 of a-z 0-9 _ - (starting with a letter or digit)", file=sys.stderr)
        return 2
    if args.action == "add":
        rec = UserRecord(name)
        token = rec.new_token()
        try:
            from storage import AlreadyExists

            store.put_if_absent(user_key(name), rec.to_json(), "application/json")
        except AlreadyExists:
            print(f"user {name} already exists (use `user token {name}` for another token)", file=sys.stderr)
            return 1
        print(token)
        return 0
    from storage import Conflict

    for _ in range(5):  # read, change, write only over what was read: another command's change is kept
        try:
            rec = UserRecord.load(store, name)
        except NotFound:
            print(f"no user {name}", file=sys.stderr)
            return 1
        token = rec.new_token() if args.action == "token" else None
        if args.action == "revoke":
            rec.token_hashes.clear()
        try:
            rec.save(store)
        except Conflict:
            continue
        print(token if token else f"revoked every token of {name}")
        return 0
    print(f"user {name} kept changing while this ran; nothing was changed: run it again", file=sys.stderr)
    return 1


def photo(args: argparse.Namespace) -> int:
    """An operator's takedown: the owner's DELETE, without the owner's token."""
    from storage.purge import Purger
    from storage import NotFound, open_store
    from storage.keys import InvalidName, valid_photo_id, valid_user
    from storage.records import PhotoRecord

    from .manage import delete_photo

    cfg = load(args.config)
    store = open_store(cfg.storage, cfg.local_root)
    try:
        rec = PhotoRecord.load(store, valid_user(args.user), valid_photo_id(args.id))
    except (InvalidName, NotFound):
        print(f"no photo {args.user}/{args.id}", file=sys.stderr)
        return 1
    purger = Purger.from_sections(cfg.purge, cfg.ypws.nodes, cfg.cluster.admin_token, cfg.public_url, store,
                                  "ypfs-takedown")
    entry = purger.log([rec.ref.purge_path()], "takedown")  # first: committed before anything changes
    removed = delete_photo(store, rec)
    report = purger.push(entry)
    print(f"deleted {rec.owner}/{rec.id} ({removed} objects); cache purge logged, applied on {report['applied']}")
    return 0


def gc(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from storage import open_store

    from .gc import sweep

    cfg = load(args.config)
    store = open_store(cfg.storage, cfg.local_root)
    with tqdm(unit=" objects", desc="gc", disable=args.quiet) as bar:
        report = sweep(store, args.grace_minutes * 60, dry_run=args.dry_run, on_key=lambda _k: bar.update())
    for key in report.orphans:
        print(("would remove " if args.dry_run else "removed ") + key)
    print(f"{report.examined} objects examined, {len(report.orphans)} unreachable "
          f"({'none removed: dry run' if args.dry_run else f'{report.removed} removed'}), "
          f"{report.young} unreachable but younger than {args.grace_minutes:g} minutes (kept)")
    return 0


def placeholders(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from storage import open_store
    from storage.keys import InvalidName, valid_user

    from .backfill import backfill

    cfg = load(args.config)
    try:
        user = valid_user(args.user) if args.user else None
    except InvalidName:
        print(f"not a user name: {args.user!r}", file=sys.stderr)
        return 2
    with tqdm(unit=" photos", desc="placeholders", disable=args.quiet) as bar:
        report = backfill(cfg.limits, open_store(cfg.storage, cfg.local_root), user, on_photo=lambda _k: bar.update())
    for line in report.failed:
        print(f"no placeholder for {line}")
    print(f"{report.examined} photos examined: {report.filled} given a placeholder, {report.had_one} had one, "
          f"{report.changed_meanwhile} changed while this ran (run again), {len(report.failed)} failed")
    return 1 if report.failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ypfs", description="ypfs: the upload server and its admin commands")
    ap.add_argument("--config", default=None, help="cluster TOML (default: $YUPOO_CONFIG, else built-in defaults)")
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run one ypfs node under gunicorn")
    s.add_argument("--node", required=True)
    s.set_defaults(func=serve)
    u = sub.add_parser("user", help="manage users and upload tokens")
    u.add_argument("action", choices=["add", "token", "revoke", "list"])
    u.add_argument("name", nargs="?")
    u.set_defaults(func=user)
    ph = sub.add_parser("photo", help="operator actions on one photo")
    ph.add_argument("action", choices=["delete"])
    ph.add_argument("user")
    ph.add_argument("id")
    ph.set_defaults(func=photo)
    g = sub.add_parser("gc", help="remove originals, renditions and duplicate entries no photo record reaches")
    g.add_argument("--grace-minutes", type=float, default=60.0,
                   help="keep unreachable objects younger than this (an upload in flight has its original "
                        "stored before its record); default 60")
    g.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=gc)
    pl = sub.add_parser("placeholders", help="give photos stored before placeholders existed their ThumbHash and "
                                             "dominant colour (photos that have them are left alone)")
    pl.add_argument("--user", help="only this user's photos (default: everyone's)")
    pl.add_argument("--quiet", action="store_true", help="no progress bar")
    pl.set_defaults(func=placeholders)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:  # the admin commands talk to the store directly
        print(f"storage error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
