"""The cluster's one timeout budget, checked when the config loads.

A failure deep down must surface as an answer before anything above it gives up,
or the client meets a killed worker, a proxy 504 or a hang instead of a 503 with
Retry-After. So every layer's limit must sit inside the next one's:

    one storage operation   min(storage.s3.deadline, retries x (connect + read) + back-offs)
      < ypfs.request_deadline    < ypfs.timeout  (gunicorn)  < hashproxy.read_timeout
      < ypws.request_deadline    < ypws.timeout  (gunicorn)  < hashproxy.read_timeout
      < magickd.request_deadline < magickd.client_timeout    < ypws.request_deadline

plus what runs inside a request: limits.decode_timeout inside ypfs's deadline, and
magickd's render_timeout and queue_wait inside magickd's. Stopping nests the same way:
each node's graceful stop (its requests in flight finishing) sits inside
supervise.stop_timeout, or the supervisor's (and systemd's) SIGKILL cuts them off. An
inconsistent config is a ConfigError at start-up naming the keys and the figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config, MagickdSection, S3StoreConfig


def storage_retry_seconds(s3: "S3StoreConfig") -> float:
    """Worst case of one S3 operation without its deadline: every attempt timing out, plus the back-offs."""
    attempts = max(1, s3.retries)
    backoffs = sum(s3.retry_backoff * 2 ** i for i in range(attempts - 1))
    return attempts * (s3.connect_timeout + s3.read_timeout) + backoffs


def storage_operation_seconds(cfg: "Config") -> float:
    """The longest one storage operation may take: its deadline, or the retries' sum if that is shorter."""
    s3 = cfg.storage.s3
    return min(s3.deadline, storage_retry_seconds(s3))


def check_timeout_budget(cfg: "Config") -> None:
    """Raise ConfigError for the first limit that does not sit inside the next one.

    Runs after every section validated itself, so each figure here is already positive."""
    from .config import ConfigError

    s3 = cfg.storage.s3
    retry_sum = storage_retry_seconds(s3)
    storage = min(s3.deadline, retry_sum)
    storage_desc = (f"one storage operation (min(storage.s3.deadline = {s3.deadline:g}, storage.s3.retries x "
                    f"(connect_timeout + read_timeout) + back-offs = {s3.retries} x ({s3.connect_timeout:g} + "
                    f"{s3.read_timeout:g}) + back-offs = {retry_sum:g}) = {storage:g}s)")
    m, proxy = cfg.magickd, cfg.hashproxy.read_timeout
    chain: list[tuple[str, float, str, float]] = [
        (storage_desc, storage, "ypfs.request_deadline", cfg.ypfs.request_deadline),
        (f"limits.decode_timeout ({cfg.limits.decode_timeout:g}s)", cfg.limits.decode_timeout,
         "ypfs.request_deadline", cfg.ypfs.request_deadline),
        (f"ypfs.request_deadline ({cfg.ypfs.request_deadline:g}s)", cfg.ypfs.request_deadline,
         "ypfs.timeout", cfg.ypfs.timeout),
        (f"ypfs.timeout ({cfg.ypfs.timeout}s)", cfg.ypfs.timeout, "hashproxy.read_timeout", proxy),
        (storage_desc, storage, "magickd.request_deadline", m.request_deadline),
        (f"magickd.render_timeout ({m.render_timeout:g}s)", m.render_timeout,
         "magickd.request_deadline", m.request_deadline),
        (f"magickd.queue_wait ({m.queue_wait:g}s)", m.queue_wait, "magickd.request_deadline", m.request_deadline),
        (f"magickd.request_deadline ({m.request_deadline:g}s)", m.request_deadline,
         "magickd.client_timeout", m.client_timeout),
        (storage_desc, storage, "ypws.request_deadline", cfg.ypws.request_deadline),
        (f"magickd.client_timeout ({m.client_timeout:g}s)", m.client_timeout,
         "ypws.request_deadline", cfg.ypws.request_deadline),
        (f"ypws.request_deadline ({cfg.ypws.request_deadline:g}s)", cfg.ypws.request_deadline,
         "ypws.timeout", cfg.ypws.timeout),
        (f"ypws.timeout ({cfg.ypws.timeout}s)", cfg.ypws.timeout, "hashproxy.read_timeout", proxy),
    ]
    for inner_desc, inner, outer_key, outer in chain:
        if not inner < outer:
            raise ConfigError(f"{outer_key}: the timeout budget does not nest: {inner_desc} must be less than "
                              f"{outer_key} ({outer:g}s)")


#: seconds a gunicorn node (ypfs, ypws) gives its requests in flight after SIGTERM
GRACEFUL_SECONDS = 10


def magickd_graceful_seconds(magickd: "MagickdSection") -> int:
    """magickd's graceful stop: a render in flight may take its whole render_timeout."""
    return int(magickd.render_timeout + 5)


def check_stop_budget(cfg: "Config") -> None:
    """ConfigError unless every node's graceful stop ends before supervise.stop_timeout's SIGKILL."""
    from .config import ConfigError

    stop = cfg.supervise.stop_timeout
    graceful = [
        (f"ypfs and ypws ({GRACEFUL_SECONDS}s)", GRACEFUL_SECONDS),
        (f"magickd (magickd.render_timeout + 5 = {magickd_graceful_seconds(cfg.magickd)}s)",
         magickd_graceful_seconds(cfg.magickd)),
        (f"hashproxy (hashproxy.graceful_timeout + 2 = {cfg.hashproxy.graceful_timeout + 2:g}s)",
         cfg.hashproxy.graceful_timeout + 2),
    ]
    for desc, seconds in graceful:
        if not seconds < stop:
            raise ConfigError(f"supervise.stop_timeout: {stop:g}s would SIGKILL a node still stopping gracefully: "
                              f"the graceful stop of {desc} must be less than it")


def magickd_worker_timeout(magickd: "MagickdSection") -> int:
    """magickd's gunicorn timeout: a request ends by its deadline, so the worker is killed only if stuck."""
    return int(magickd.request_deadline + 10)
