"""The cluster's configuration: one TOML file, typed once, shared by every component.

`cluster/defaults.toml` is both the documentation and the source of every default;
a user file (``YUPOO_CONFIG`` or ``--config``) is deep-merged over it. The merged
tree is turned into frozen dataclasses with unknown keys and wrong types rejected,
so a typo fails at start-up instead of silently doing nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import re
import secrets
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .profiles import SizeProfile, validate_sizes

DEFAULTS_PATH = Path(__file__).with_name("defaults.toml")
ENV_VAR = "YUPOO_CONFIG"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


@dataclass(frozen=True)
class NodeConfig:
    name: str
    host: str = "127.0.0.1"   # the address others dial (advertised)
    port: int = 0
    node_id: int = 0
    listen: str = ""          # the address this node binds; empty: host

    @property
    def url(self) -> str:
        return f"http://{_hostport(self.host, self.port)}"

    @property
    def bind(self) -> str:
        """host:port for gunicorn's bind: the listen address, else the advertised one."""
        return _hostport(self.listen or self.host, self.port)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _require(ok: bool, key: str, rule: str) -> None:
    """Raise ConfigError naming ``key`` (the full dotted key) and the rule it breaks, unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {rule}")


def _positive(prefix: str, section: Any, *names: str) -> None:
    for name in names:
        _require(getattr(section, name) > 0, f"{prefix}.{name}", "must be positive")


def _at_least(prefix: str, section: Any, minimum: float, *names: str) -> None:
    for name in names:
        _require(getattr(section, name) >= minimum, f"{prefix}.{name}", f"at least {minimum:g}")


# Sections carry no default values: defaults.toml holds them (with their documentation),
# and the merged tree every Config is built from always has every key. Code that needs
# a section without a file uses ``defaults().ypws`` and ``dataclasses.replace``.


@dataclass(frozen=True)
class ClusterSection:
    public_url: str
    data_dir: str
    admin_token: str
    url_key: str
    secrets_file: str

    def validate(self) -> None:
        _require(not self.public_url or self.public_url.startswith(("http://", "https://")),
                 "cluster.public_url", "an http:// or https:// URL, or empty")
        _require(bool(self.data_dir), "cluster.data_dir", "must not be empty")


@dataclass(frozen=True)
class LocalStoreConfig:
    root: str

    def validate(self) -> None:
        """Any path will do (empty: {data_dir}/store); nothing to check."""


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class S3StoreConfig:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    secure: bool
    region: str
    part_size: int
    retries: int
    retry_backoff: float
    connect_timeout: float
    read_timeout: float
    deadline: float

    def validate(self) -> None:
        _require(bool(self.endpoint) and "://" not in self.endpoint and "/" not in self.endpoint,
                 "storage.s3.endpoint", f"host:port without a scheme or path (secure = true for TLS), not {self.endpoint!r}")
        _require(bool(_BUCKET.fullmatch(self.bucket)), "storage.s3.bucket",
                 f"3..63 lower-case letters, digits, '.' or '-' (an S3 bucket name), not {self.bucket!r}")
        _require(5 * 1024 * 1024 <= self.part_size <= 5 * 1024 ** 3, "storage.s3.part_size",
                 "S3 needs parts of at least 5 MiB (and at most 5 GiB)")
        _positive("storage.s3", self, "connect_timeout", "read_timeout", "deadline")
        _require(self.retries >= 1 and self.retry_backoff >= 0, "storage.s3.retries",
                 "at least 1 (and retry_backoff 0 or more)")


@dataclass(frozen=True)
class StorageSection:
    backend: str
    local: LocalStoreConfig
    s3: S3StoreConfig

    def validate(self) -> None:
        _require(self.backend in ("local", "s3"), "storage.backend", "must be 'local' or 's3'")
        self.local.validate()
        self.s3.validate()


@dataclass(frozen=True)
class PurgeSection:
    poll_interval: float
    settle: float
    retention: float
    push_timeout: float
    cdn_purge_url: str

    def validate(self) -> None:
        if not 0.05 <= self.poll_interval <= 60:
            raise ConfigError("purge.poll_interval: 0.05..60 seconds")
        if not 2 * self.poll_interval <= self.settle <= 600:
            raise ConfigError("purge.settle: at least 2 x poll_interval, at most 600 seconds")
        if self.retention < max(3600.0, 10 * self.settle):
            raise ConfigError("purge.retention: at least an hour (and 10 x settle)")
        if not 0 < self.push_timeout <= 30:
            raise ConfigError("purge.push_timeout: 0..30 seconds")
        if self.cdn_purge_url and not self.cdn_purge_url.startswith(("http://", "https://")):
            raise ConfigError("purge.cdn_purge_url: an http:// or https:// URL template, or empty")


@dataclass(frozen=True)
class LimitsSection:
    max_upload_bytes: int
    max_pixels: int
    spool_threshold: int
    max_title_chars: int
    decode_timeout: float

    def validate(self) -> None:
        _positive("limits", self, "max_upload_bytes", "max_pixels", "spool_threshold", "max_title_chars",
                  "decode_timeout")


@dataclass(frozen=True)
class IdsSection:
    epoch_ms: int
    node_id: int

    def validate(self) -> None:
        _require(self.epoch_ms >= 0, "ids.epoch_ms", "milliseconds since 1970, 0 or more")
        _require(0 <= self.node_id <= 255, "ids.node_id", "0..255")


#: ypws.cache_policy values: the policies ypws's shared index runs (ypws.index.INDEX_POLICIES)
CACHE_POLICIES = ("lru", "s2lru", "s4lru", "sieve", "sieve+adaptsize", "sieve+nthmiss", "s3fifo", "s3fifo+adaptsize", "s3fifo+nthmiss")


@dataclass(frozen=True)
class YpfsSection:
    workers: int
    timeout: int
    request_deadline: float
    render_after_upload: bool
    render_retries: int
    nodes: tuple[NodeConfig, ...]

    def validate(self) -> None:
        _at_least("ypfs", self, 1, "workers", "timeout")
        _positive("ypfs", self, "request_deadline")
        _at_least("ypfs", self, 0, "render_retries")


#: hashproxy.image_balance values (hashproxy.balancer.IMAGE_BALANCERS)
IMAGE_BALANCE_MODES = ("hash", "round-robin")


@dataclass(frozen=True)
class MagickdSection:
    workers: int
    queue_size: int
    render_timeout: float
    failure_ttl: float
    vips_concurrency: int
    vips_cache_max_mem: int
    client_timeout: float
    client_retries: int
    webp_effort: int
    avif_effort: int
    queue_wait: float
    request_deadline: float
    nodes: tuple[NodeConfig, ...]

    @property
    def effective_workers(self) -> int:
        return self.workers or (os.cpu_count() or 1)

    def validate(self) -> None:
        _require(self.workers >= 0, "magickd.workers", "at least 1, or 0 for one per CPU core")
        _at_least("magickd", self, 0, "queue_size", "failure_ttl", "vips_cache_max_mem", "client_retries")
        _at_least("magickd", self, 1, "vips_concurrency")
        _positive("magickd", self, "render_timeout", "client_timeout", "queue_wait", "request_deadline")
        _require(0 <= self.webp_effort <= 6, "magickd.webp_effort", "0..6")
        _require(0 <= self.avif_effort <= 9, "magickd.avif_effort", "0..9")


@dataclass(frozen=True)
class YpwsSection:
    workers: int
    cache_bytes: int
    cache_dir: str
    max_age: int
    original_max_age: int
    hotlink_protection: bool
    hotlink_allow: tuple[str, ...]
    hotlink_action: str
    signed_url_max_ttl: int
    unversioned_max_age: int
    client_timeout: float
    max_connections: int
    cache_policy: str
    threads: int
    timeout: int
    request_deadline: float
    access_log: str
    upload_url: str
    cache_retry_seconds: float
    nodes: tuple[NodeConfig, ...]

    def validate(self) -> None:
        _at_least("ypws", self, 1, "workers", "max_connections", "threads", "timeout", "signed_url_max_ttl")
        _positive("ypws", self, "cache_bytes", "client_timeout", "request_deadline")
        _at_least("ypws", self, 0, "max_age", "original_max_age", "unversioned_max_age")
        _require(self.hotlink_action in ("403", "placeholder"), "ypws.hotlink_action", "'403' or 'placeholder'")
        _require(self.cache_policy in CACHE_POLICIES, "ypws.cache_policy",
                 f"one of {', '.join(CACHE_POLICIES)}, not {self.cache_policy!r}")
        _require(bool(self.access_log), "ypws.access_log", "'stderr', 'off' or a file path")
        _require(0 < self.cache_retry_seconds <= 3600, "ypws.cache_retry_seconds",
                 "must be above 0 and at most 3600 seconds")


@dataclass(frozen=True)
class HashproxySection:
    host: str
    listen: str
    port: int
    workers: int
    balance_factor: float
    balance_min_load: int
    health_interval: float
    health_timeout: float
    fail_threshold: int
    rampup_seconds: float
    connect_timeout: float
    read_timeout: float
    client_timeout: float
    max_connections: int
    max_request_line: int
    max_header_bytes: int
    image_balance: str
    graceful_timeout: float
    pool_idle_timeout: float
    pool_max_idle: int
    reuse_port: bool
    upload_deadline: float
    spool_bytes: int

    @property
    def bind_host(self) -> str:
        """The address the proxy binds: ``listen``, else ``host``."""
        return self.listen or self.host

    def validate(self) -> None:
        _require(self.image_balance in IMAGE_BALANCE_MODES, "hashproxy.image_balance",
                 f"one of {', '.join(IMAGE_BALANCE_MODES)}, not {self.image_balance!r}")
        _at_least("hashproxy", self, 1, "workers", "fail_threshold", "max_connections")
        _require(self.balance_factor == 0 or self.balance_factor >= 1, "hashproxy.balance_factor",
                 "0 (off) or at least 1.0")
        _at_least("hashproxy", self, 0, "balance_min_load", "rampup_seconds", "graceful_timeout", "pool_max_idle")
        _positive("hashproxy", self, "health_interval", "health_timeout", "connect_timeout", "read_timeout",
                  "client_timeout", "pool_idle_timeout", "upload_deadline")
        _require(self.max_request_line >= 256, "hashproxy.max_request_line", "at least 256 bytes")
        _require(self.max_header_bytes >= 1024, "hashproxy.max_header_bytes", "at least 1024 bytes")
        _require(self.spool_bytes >= 1024 * 1024, "hashproxy.spool_bytes", "at least 1 MiB")


@dataclass(frozen=True)
class SuperviseSection:
    """How `cluster run` (and the systemd units `cluster units` writes) restart a node that dies."""

    restart_delay: float
    restart_delay_max: float
    stable_after: float
    burst: int
    interval: float
    stop_timeout: float

    def validate(self) -> None:
        if not 0 < self.restart_delay <= self.restart_delay_max:
            raise ConfigError("supervise.restart_delay: must be > 0 and <= supervise.restart_delay_max")
        if self.stable_after <= 0 or self.interval <= 0 or self.stop_timeout <= 0:
            raise ConfigError("supervise.stable_after, supervise.interval, supervise.stop_timeout: must be > 0")
        if self.burst < 1:
            raise ConfigError("supervise.burst: at least 1")


@dataclass(frozen=True)
class Config:
    cluster: ClusterSection
    storage: StorageSection
    purge: PurgeSection
    limits: LimitsSection
    ids: IdsSection
    sizes: tuple[SizeProfile, ...]
    ypfs: YpfsSection
    magickd: MagickdSection
    ypws: YpwsSection
    hashproxy: HashproxySection
    supervise: SuperviseSection
    source: str = ""  # path of the user file, "" when running on defaults only

    # -- derived values ------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return Path(self.cluster.data_dir).resolve()

    @property
    def public_url(self) -> str:
        return (self.cluster.public_url or f"http://{self.hashproxy.host}:{self.hashproxy.port}").rstrip("/")

    @property
    def local_root(self) -> Path:
        return Path(self.storage.local.root).resolve() if self.storage.local.root else self.data_dir / "store"

    def size(self, name: str) -> SizeProfile | None:
        for profile in self.sizes:
            if profile.name == name:
                return profile
        return None

    def node(self, role: str, name: str) -> NodeConfig:
        for node in getattr(self, role).nodes:
            if node.name == name:
                return node
        raise ConfigError(f"no {role} node named {name!r}")

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


# -- loading ---------------------------------------------------------------------------


def _merge(base: dict, over: dict, path: str = "") -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = _merge(base[key], value, f"{path}{key}.")
        else:
            out[key] = value
    return out


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table")
        return _build(tp, value, where)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        return tuple(_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool, float):
        if type(value) is not tp:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp!r}")  # pragma: no cover - schema bug


def _build(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {', '.join(unknown)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _validate(cfg: Config) -> None:
    """Each section checks its own values, then the checks that span sections run."""
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if hasattr(section, "validate"):
            section.validate()
    validate_sizes(cfg.sizes)
    _validate_nodes(cfg)
    _validate_addresses(cfg)
    from .budget import check_stop_budget, check_timeout_budget

    check_timeout_budget(cfg)
    check_stop_budget(cfg)


def _validate_nodes(cfg: Config) -> None:
    """Every role has nodes, named uniquely; ypfs nodes have distinct photo-id node numbers."""
    for role in ("ypfs", "magickd", "ypws"):
        nodes = getattr(cfg, role).nodes
        if not nodes:
            raise ConfigError(f"{role}.nodes: at least one node is needed")
        if len({n.name for n in nodes}) != len(nodes):
            raise ConfigError(f"{role}.nodes: node names must be unique")
    for n in cfg.ypfs.nodes:
        if not 0 <= n.node_id <= 255:
            raise ConfigError(f"ypfs.nodes.{n.name}.node_id: 0..255")
    if len({n.node_id for n in cfg.ypfs.nodes}) != len(cfg.ypfs.nodes):
        raise ConfigError("ypfs.nodes: node_id must be unique per node (photo ids depend on it)")


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


def valid_address(text: str) -> bool:
    """An IPv4/IPv6 address or an RFC 1123 host name (what a node may bind or be dialled at)."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return bool(_HOSTNAME.fullmatch(text)) and not text.replace(".", "").isdigit()


def _validate_addresses(cfg: Config) -> None:
    places = [(f"{role}.nodes.{n.name}", n) for role in ("ypfs", "magickd", "ypws") for n in getattr(cfg, role).nodes]
    places.append(("hashproxy", cfg.hashproxy))
    for where, item in places:
        if not valid_address(item.host):
            raise ConfigError(f"{where}.host: not an IP address or host name: {item.host!r}")
        if item.listen and not valid_address(item.listen):
            raise ConfigError(f"{where}.listen: not an IP address or host name: {item.listen!r}")
        if not 0 < item.port < 65536:
            raise ConfigError(f"{where}.port: 1..65535")


def load_dict(path: str | os.PathLike | None = None) -> dict:
    """The merged raw tree: defaults, then the user file if any."""
    with open(DEFAULTS_PATH, "rb") as fh:
        tree = tomllib.load(fh)
    if path:
        try:
            with open(path, "rb") as fh:
                user = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        tree = _merge(tree, user)
    return tree


def from_dict(tree: dict, source: str = "") -> Config:
    cfg = _build(Config, {**_with_node_ids(tree), "source": source}, "")
    _validate(cfg)
    return cfg


def _with_node_ids(tree: dict) -> dict:
    """``ids.node_id`` for every ypfs node that does not set its own (a one-node cluster's
    file need not repeat it; two such nodes fail the uniqueness check, naming it)."""
    default = tree.get("ids", {}).get("node_id") if isinstance(tree.get("ids"), dict) else None
    nodes = tree.get("ypfs", {}).get("nodes") if isinstance(tree.get("ypfs"), dict) else None
    if default is None or not isinstance(nodes, list):
        return tree
    filled = [{"node_id": default, **n} if isinstance(n, dict) else n for n in nodes]
    return {**tree, "ypfs": {**tree["ypfs"], "nodes": filled}}


@functools.cache
def defaults() -> Config:
    """The config of defaults.toml alone (secrets left empty): where code and tests that build
    one section by hand start from, e.g. ``dataclasses.replace(defaults().ypws, workers=1)``."""
    return from_dict(load_dict())


def load(path: str | os.PathLike | None = None, *, with_secrets: bool = True) -> Config:
    """Load the config from ``path``, else ``$YUPOO_CONFIG``, else defaults only.

    With ``with_secrets`` (the default) empty secrets are filled from
    ``{data_dir}/secrets.toml``, generating it on first use, so every process of one
    cluster agrees on them without any of them being configured.
    """
    path = path or os.environ.get(ENV_VAR) or None
    cfg = from_dict(load_dict(path), str(path or ""))
    return ensure_secrets(cfg) if with_secrets else cfg


SECRET_KEYS = ("admin_token", "url_key")


def host_addresses(cfg: Config) -> set[str]:
    """The distinct host addresses the nodes and the front are dialled at; every loopback
    address (127.0.0.0/8, ::1, localhost) counts as one, "loopback"."""
    out = set()
    for host in [n.host for role in ("ypfs", "magickd", "ypws") for n in getattr(cfg, role).nodes] + [cfg.hashproxy.host]:
        out.add("loopback" if is_loopback(host) else host.lower().rstrip("."))
    return out


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_secrets(path: Path, setting: str) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc}") from None


def ensure_secrets(cfg: Config) -> Config:
    """Fill the empty secrets (admin_token, url_key) so every process of the cluster agrees on them.

    Sources, first wins per key: the config itself, then ``cluster.secrets_file`` when
    named (it must then exist and hold what the config leaves empty). Without either,
    a cluster on one host generates them once into ``{data_dir}/secrets.toml``; a
    cluster whose nodes span several hosts refuses instead (ConfigError naming the
    settings), because each host would generate its own and purges, signed URLs and
    admin calls would fail across hosts.
    """
    section = cfg.cluster
    if section.admin_token and section.url_key:
        return cfg
    stored = check_secrets(cfg)
    if stored is None:
        stored = _generated_secrets(cfg.data_dir / "secrets.toml")
    section = dataclasses.replace(
        section, admin_token=section.admin_token or stored["admin_token"], url_key=section.url_key or stored["url_key"])
    return cfg.replace(cluster=section)


def check_secrets(cfg: Config) -> dict | None:
    """What ``cluster.secrets_file`` holds, ``None`` when the secrets are to be generated on this
    (single) host; ConfigError when neither the config nor the file gives what a multi-host
    cluster needs. Nothing is written."""
    section = cfg.cluster
    if section.secrets_file:
        path = Path(section.secrets_file)
        stored = _read_secrets(path, "cluster.secrets_file")
        missing = [k for k in SECRET_KEYS if not (getattr(section, k) or stored.get(k))]
        if missing:
            raise ConfigError(
                f"cluster.secrets_file: {path} {'does not hold' if path.exists() else 'does not exist; it must hold'} "
                f"{' and '.join(missing)} (a TOML file: admin_token = \"...\", url_key = \"...\")")
        return stored
    if section.admin_token and section.url_key:
        return {}
    if len(host_addresses(cfg)) > 1:
        missing = [f"cluster.{k}" for k in SECRET_KEYS if not getattr(section, k)]
        raise ConfigError(
            f"{' and '.join(missing)} must be set: the nodes span several hosts ({', '.join(sorted(host_addresses(cfg)))}), "
            "so secrets generated per host would differ. Set them in the config, or name a TOML file holding "
            "admin_token and url_key in cluster.secrets_file and copy it to every host")
    return None


def secrets_source(cfg: Config) -> str:
    """Where the secrets of ``cfg`` (as loaded, before ensure_secrets) come from, for a message
    that must not print them."""
    c = cfg.cluster
    if c.admin_token and c.url_key and not c.secrets_file:
        return "set in the config (cluster.admin_token, cluster.url_key)"
    if c.secrets_file:
        return str(Path(c.secrets_file).resolve())
    return str(cfg.data_dir / "secrets.toml")


def _generated_secrets(path: Path) -> dict:
    stored = _read_secrets(path, "secrets file")
    if not all(stored.get(k) for k in SECRET_KEYS):
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = {"admin_token": secrets.token_urlsafe(24), "url_key": secrets.token_urlsafe(32)}
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(f'{k} = "{v}"\n' for k, v in stored.items()))
        try:
            os.link(tmp, path)  # first writer wins when several processes race
        except FileExistsError:
            stored = _read_secrets(path, "secrets file")
        finally:
            tmp.unlink(missing_ok=True)
    return stored


def dump_toml(tree: dict) -> str:
    """Serialise a raw config tree (as built by tests and the runner) back to TOML."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    lines: list[str] = []

    def table(prefix: str, data: dict) -> None:
        simple = {k: v for k, v in data.items() if not isinstance(v, dict) and not _is_table_list(v)}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {scalar(v)}" for k, v in simple.items())
        for k, v in data.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)
            elif _is_table_list(v):
                for item in v:
                    lines.append(f"[[{prefix}.{k}]]" if prefix else f"[[{k}]]")
                    lines.extend(f"{ik} = {scalar(iv)}" for ik, iv in item.items())

    table("", tree)
    return "\n".join(lines) + "\n"


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)
