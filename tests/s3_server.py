"""An S3-compatible object store on loopback for the lake tests (not a test module).

:class:`S3Server` runs ``moto_server`` (moto[server], a dev dependency) as a child process
bound to 127.0.0.1 on a free port; :func:`s3_env` is the environment that points the lake
(pyarrow's S3 filesystem, delta-rs) and boto3 at it: the standard ``AWS_*`` variables.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import boto3

HOST = "127.0.0.1"
#: How long the server may take to accept connections.
START_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port of loopback nobody listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def s3_env(endpoint: str, key: str = "testing", secret: str = "testing") -> dict[str, str]:
    """The ``AWS_*`` variables that point a client at ``endpoint`` with the given keys (and
    never at a profile, a config file or the instance metadata service of the machine)."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true",
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


class S3Server:
    """``moto_server`` on ``127.0.0.1:<free port>``, started by :meth:`start` (which waits
    until it accepts connections) and killed by :meth:`stop`."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()

    def start(self, timeout_s: float = START_TIMEOUT_S) -> S3Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with status {self.proc.returncode} before accepting "
                                   f"connections on {self.endpoint}:\n{self.output()}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    out = self.output()
                    self.stop()
                    raise RuntimeError(f"moto_server did not accept connections on {self.endpoint} within "
                                       f"{timeout_s:.0f} s:\n{out}") from None
                time.sleep(0.05)

    def output(self) -> str:
        """The last lines the server printed."""
        self._log.seek(0)
        return "\n".join(self._log.read().decode(errors="replace").splitlines()[-20:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()

    def client(self, service: str = "s3", key: str = "testing", secret: str = "testing"):
        """A boto3 client of this server."""
        return boto3.client(service, endpoint_url=self.endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                            region_name="us-east-1")

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
