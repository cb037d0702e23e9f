"""Private RabbitMQ and Redis servers that speak only TLS to clients, with a test CA whose
server certificate names 127.0.0.1 and a client certificate both servers require."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field

from .servers import PrivateRabbit, free_port, wait_port


@dataclass(frozen=True)
class Certs:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)


def make_certs(directory: str) -> Certs:
    """A CA, and a server and a client certificate it signed (valid for two days)."""
    os.makedirs(directory, exist_ok=True)
    path = lambda name: os.path.join(directory, name)  # noqa: E731
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", path("ca.key"), "-out", path("ca.pem"),
             "-days", "2", "-subj", "/CN=enginefarm test CA")
    with open(path("server.ext"), "w") as handle:
        handle.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    with open(path("client.ext"), "w") as handle:
        handle.write("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", path(f"{who}.key"), "-out", path(f"{who}.csr"),
                 "-subj", f"/CN=enginefarm test {who}")
        _openssl("x509", "-req", "-in", path(f"{who}.csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"),
                 "-CAcreateserial", "-out", path(f"{who}.pem"), "-days", "2", "-extfile", path(f"{who}.ext"))
    return Certs(path("ca.pem"), path("server.pem"), path("server.key"), path("client.pem"), path("client.key"))


@dataclass
class TlsRabbit(PrivateRabbit):
    """A private node whose AMQP clients must use TLS with a client certificate. Its plain
    listener stays bound to loopback for the harness (start-up checks, rabbitmqctl)."""

    certs: Certs | None = None
    tls_port: int = field(default_factory=free_port)

    def tls_url(self, with_client_cert: bool = True, ca: str | None = None) -> str:
        assert self.certs is not None
        query = f"ssl_ca_certs={ca or self.certs.ca}"
        if with_client_cert:
            query += f"&ssl_certfile={self.certs.client_cert}&ssl_keyfile={self.certs.client_key}"
        return f"amqps://guest:guest@127.0.0.1:{self.tls_port}/%2F?{query}"

    def _env(self) -> dict[str, str]:
        env = super()._env()
        assert self.certs is not None
        with open(os.path.join(self.base_dir, "rabbitmq.conf"), "a") as handle:
            handle.write(
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
                f"ssl_options.cacertfile = {self.certs.ca}\n"
                f"ssl_options.certfile = {self.certs.server_cert}\n"
                f"ssl_options.keyfile = {self.certs.server_key}\n"
                "ssl_options.verify = verify_peer\n"
                "ssl_options.fail_if_no_peer_cert = true\n"
            )
        return env

    def start(self, timeout_s: float = 90.0) -> None:
        super().start(timeout_s)
        wait_port(self.tls_port, True, timeout_s, "private RabbitMQ's TLS listener")


@dataclass
class TlsRedis:
    """A private Redis that listens only for TLS clients presenting a certificate."""

    base_dir: str
    certs: Certs
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def url(self, with_client_cert: bool = True, ca: str | None = None) -> str:
        query = f"ssl_ca_certs={ca or self.certs.ca}"
        if with_client_cert:
            query += f"&ssl_certfile={self.certs.client_cert}&ssl_keyfile={self.certs.client_key}"
        return f"rediss://127.0.0.1:{self.port}/0?{query}"

    def start(self, timeout_s: float = 30.0) -> None:
        os.makedirs(self.base_dir, exist_ok=True)
        with open(os.path.join(self.base_dir, "redis.log"), "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(self.port),
                 "--tls-cert-file", self.certs.server_cert, "--tls-key-file", self.certs.server_key,
                 "--tls-ca-cert-file", self.certs.ca, "--tls-auth-clients", "yes",
                 "--dir", self.base_dir, "--save", "", "--appendonly", "no", "--daemonize", "no"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )
        wait_port(self.port, True, timeout_s, "private TLS Redis")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
