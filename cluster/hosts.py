"""Which of the config's processes belong on this machine: one config file for every host.

The rule (``python -m cluster run`` and ``python -m cluster units`` both use it):

- A node (``[[ypfs.nodes]]``, ``[[magickd.nodes]]``, ``[[ypws.nodes]]``) belongs here when
  its ``host`` (the address others dial) or its ``listen`` address (the one it binds) is
  one of this machine's own addresses. The front (``python -m hashproxy serve``) belongs
  here when ``hashproxy.host`` or ``hashproxy.listen`` is.
- Loopback addresses (127.0.0.0/8, ::1, ``localhost``) are every machine's own, so the
  one-box defaults (everything on 127.0.0.1) all run under one ``make run``.
- A wildcard ``listen`` ("0.0.0.0", "::") binds on any machine, so it says nothing about
  where a node runs: such a node is placed by its ``host``.
- A host name counts when any address it resolves to is local.
- ``--node NAME`` and ``--role ROLE`` (both repeatable) replace the address rule: exactly
  the named nodes and every node of the named roles are chosen (``--role hashproxy`` is
  the front).

This machine's addresses are read from the kernel without new dependencies: IPv4 from
``/proc/net/fib_trie`` (the local routing table: every address assigned to an interface
of this network namespace, secondary ones included) and IPv6 from ``/proc/net/if_inet6``.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .config import Config, ConfigError, NodeConfig

#: per-node roles in start order (the front, hashproxy, last); stop order is the reverse
NODE_ROLES = ("magickd", "ypfs", "ypws")
ROLES = (*NODE_ROLES, "hashproxy")
WILDCARDS = ("0.0.0.0", "::")


@dataclass(frozen=True)
class Target:
    """One process of the cluster: a node of a role, or the front."""

    role: str
    name: str         # node name; "hashproxy" for the front
    host: str         # advertised address
    listen: str       # bound address ("" = host)
    port: int

    @property
    def serve_args(self) -> list[str]:
        """Arguments after ``python -m <role>``."""
        return ["serve"] if self.role == "hashproxy" else ["serve", "--node", self.name]

    @property
    def probe_host(self) -> str:
        """Where a local health check dials: the bound address unless it is a wildcard."""
        return self.listen if self.listen and self.listen not in WILDCARDS else self.host

    @property
    def health_url(self) -> str:
        h = self.probe_host
        return f"http://{'[' + h + ']' if ':' in h else h}:{self.port}/healthz"

    @property
    def ready_url(self) -> str:
        """What start-up waits for: ypws is ready once it applied the purge log (its cache is
        trusted from then on); the others once they are alive."""
        return self.health_url[: -len("healthz")] + "readyz" if self.role == "ypws" else self.health_url

    def describe(self) -> str:
        where = self.host if not self.listen else f"{self.host} (listen {self.listen})"
        return f"{self.name} [{self.role}] {where}:{self.port}"


def targets(cfg: Config) -> list[Target]:
    """Every process of the cluster, in start order."""
    out = []
    for role in NODE_ROLES:
        node: NodeConfig
        for node in getattr(cfg, role).nodes:
            out.append(Target(role, node.name, node.host, node.listen, node.port))
    h = cfg.hashproxy
    out.append(Target("hashproxy", "hashproxy", h.host, h.listen, h.port))
    return out


def _fib_trie_locals(text: str) -> set[str]:
    """IPv4 addresses marked ``/32 host LOCAL`` in /proc/net/fib_trie."""
    found, last = set(), None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            last = stripped[4:].strip()
        elif last and stripped.startswith("/32 host LOCAL"):
            found.add(last)
    return found


def _if_inet6_locals(text: str) -> set[str]:
    found = set()
    for line in text.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            found.add(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return found


def local_addresses(proc_net: Path = Path("/proc/net")) -> set[str]:
    """This machine's (this network namespace's) own addresses, loopback and wildcards included."""
    found = {"127.0.0.1", "::1", *WILDCARDS}
    for name, parse in (("fib_trie", _fib_trie_locals), ("if_inet6", _if_inet6_locals)):
        try:
            found |= parse((proc_net / name).read_text())
        except OSError:  # no IPv6 in this kernel, or /proc not mounted: what we have still holds
            continue
    return found


def _resolve(address: str) -> set[str]:
    """The IP addresses an address stands for (itself when it is one); empty when it does not resolve."""
    try:
        return {str(ipaddress.ip_address(address))}
    except ValueError:
        pass
    if address.lower().rstrip(".") == "localhost":
        return {"127.0.0.1", "::1"}
    try:
        return {info[4][0].split("%", 1)[0] for info in socket.getaddrinfo(address, None, proto=socket.IPPROTO_TCP)}
    except (socket.gaierror, UnicodeError):
        return set()


def is_local(address: str, local: set[str]) -> bool:
    for ip in _resolve(address):
        if ip in local or ipaddress.ip_address(ip).is_loopback:
            return True
    return False


def belongs_here(target: Target, local: set[str]) -> bool:
    if is_local(target.host, local):
        return True
    return bool(target.listen) and target.listen not in WILDCARDS and is_local(target.listen, local)


def select(cfg: Config, *, nodes: Iterable[str] = (), roles: Iterable[str] = (),
           local: set[str] | None = None) -> list[Target]:
    """The processes to run on this machine (see the module docstring), in start order.

    ``local`` replaces this machine's addresses (``cluster units --host ADDR`` writes another
    host's units). Raises ConfigError naming what is wrong when nothing is selected.
    """
    every = targets(cfg)
    nodes, roles = list(nodes), list(roles)
    if nodes or roles:
        known = {t.name for t in every}
        unknown = [n for n in nodes if n not in known]
        if unknown:
            raise ConfigError(f"--node: no node named {', '.join(unknown)} (nodes: {', '.join(sorted(known))})")
        bad = [r for r in roles if r not in ROLES]
        if bad:
            raise ConfigError(f"--role: unknown role {', '.join(bad)} (roles: {', '.join(ROLES)})")
        return [t for t in every if t.name in nodes or t.role in roles]
    local = local_addresses() if local is None else local
    chosen = [t for t in every if belongs_here(t, local)]
    if not chosen:
        mine = ", ".join(sorted(a for a in local if a not in WILDCARDS))
        theirs = "; ".join(t.describe() for t in every)
        raise ConfigError(
            f"no node of this config belongs on this machine: its addresses are {mine}; the nodes are "
            f"{theirs}. Fix the nodes' host/listen addresses, or choose with --node NAME / --role ROLE")
    return chosen


def add_selection_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--node", action="append", default=[], metavar="NAME",
                    help="choose this node (repeatable); with --node/--role the address rule is not used")
    ap.add_argument("--role", action="append", default=[], metavar="ROLE",
                    help="choose every node of this role: ypfs, magickd, ypws or hashproxy (repeatable)")
