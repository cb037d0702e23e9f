"""TLS to both servers: a cluster farms over amqps:// and rediss:// with client certificates,
and a client that cannot verify a server, or shows no certificate, gets a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from enginefarm import Client
from enginefarm.errors import BrokerError, ConfigError, StoreError

from ..tls import TlsRabbit, TlsRedis, make_certs

TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    certs = make_certs(str(base / "certs"))
    other = make_certs(str(base / "other"))  # a CA that signed neither server
    rabbit = TlsRabbit(str(base / "rabbit"), certs=certs)
    store = TlsRedis(str(base / "redis"), certs)
    try:
        rabbit.start()
        store.start()
        yield rabbit, store, other
    finally:
        store.stop()
        rabbit.stop()


@pytest.fixture
def tls_settings(servers, settings):
    rabbit, store, _ = servers
    return settings.replace(amqp_url=rabbit.tls_url(), redis_url=store.url())


def test_a_cluster_farms_over_tls_to_both_servers(servers, tls_settings, cluster):
    cluster.settings = tls_settings
    cluster.start_scheduler()
    engines = cluster.start_engines(2)
    c = Client(settings=tls_settings)
    try:
        assert c.load_balanced_view().map_sync(abs, range(-50, 0)) == list(range(50, 0, -1))
        dv = c[[d.engine_id for d in engines]]
        dv.push({"a": np.arange(300_000.0)}, block=True)  # buffers go out of band, over TLS too
        assert dv.apply_sync(lambda a: float(a.sum()), __import__("enginefarm").Reference("a")) == \
            [float(np.arange(300_000.0).sum())] * 2
        assert c.queue_status()["unassigned"] == 0
    finally:
        c.close()


def test_a_server_the_client_cannot_verify_is_refused_clearly(servers, settings):
    rabbit, store, other = servers
    c = Client(settings=settings.replace(amqp_url=rabbit.tls_url(ca=other.ca), redis_url=store.url(),
                                         reconnect_window_s=1.0))
    try:
        with pytest.raises(BrokerError, match="(?i)certificate"):
            c.load_balanced_view().apply(abs, -1, block=False)
    finally:
        c.close()
    c = Client(settings=settings.replace(amqp_url=rabbit.tls_url(), redis_url=store.url(ca=other.ca),
                                         reconnect_window_s=1.0))
    try:
        with pytest.raises(StoreError, match="(?i)certificate"):
            c.queue_status()
    finally:
        c.close()


def test_a_client_without_a_certificate_is_refused(servers, settings):
    rabbit, store, _ = servers
    c = Client(settings=settings.replace(amqp_url=rabbit.tls_url(with_client_cert=False), redis_url=store.url(),
                                         reconnect_window_s=1.0))
    try:
        with pytest.raises(BrokerError):
            c.load_balanced_view().apply(abs, -1, block=False)
    finally:
        c.close()
    c = Client(settings=settings.replace(amqp_url=rabbit.tls_url(), redis_url=store.url(with_client_cert=False),
                                         reconnect_window_s=1.0))
    try:
        with pytest.raises(StoreError):
            c.queue_status()
    finally:
        c.close()


def test_tls_options_need_an_amqps_url(settings):
    with pytest.raises(ConfigError, match="ssl_ca_certs, which needs an amqps://"):
        settings.replace(amqp_url="amqp://guest:guest@127.0.0.1:5672/%2F?ssl_ca_certs=/x")
    with pytest.raises(ConfigError, match="twice"):
        settings.replace(amqp_url="amqps://guest:guest@127.0.0.1/%2F?ssl_ca_certs=/x&ssl_ca_certs=/y")
