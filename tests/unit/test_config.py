"""Settings: where each value comes from, and which values are refused (no servers)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from enginefarm.broker.connection import BrokerConnection
from enginefarm.config import (ENV_PREFIX, RedisClusterURL, Settings, default_key_file, parse_redis_cluster_url,
                               split_urls)
from enginefarm.errors import ConfigError, EnginefarmError
from enginefarm.local import settings_env

DEFAULTS = Settings()


def test_defaults_with_empty_environment():
    s = Settings.load(env={})
    assert s == DEFAULTS
    assert s.cluster == "default"
    assert s.amqp_url == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert (s.heartbeat_interval_s, s.engine_timeout_s) == (2.0, 10.0)
    assert s.amqp_heartbeat_s == 30 and s.prefetch == 64
    assert (s.batch_max, s.batch_window_s) == (32, 0.05)
    # Metrics, once given a port, are for this host only unless an address is given.
    assert (s.metrics_port, s.metrics_addr) == (0, "127.0.0.1")


def test_environment_overrides_defaults_with_converted_types():
    env = {
        "ENGINEFARM_CLUSTER": "from-env",
        "ENGINEFARM_AMQP_HEARTBEAT_S": "2",
        "ENGINEFARM_ENGINE_TIMEOUT_S": "12.5",
        "ENGINEFARM_PREFETCH": "7",
        "ENGINEFARM_KEY_FILE": "/tmp/some.key",
    }
    s = Settings.load(env=env)
    assert s.cluster == "from-env"
    assert s.amqp_heartbeat_s == 2 and type(s.amqp_heartbeat_s) is int
    assert s.engine_timeout_s == 12.5 and type(s.engine_timeout_s) is float
    assert s.prefetch == 7
    assert s.key_file == "/tmp/some.key"
    # Untouched fields keep their defaults.
    assert s.redis_url == DEFAULTS.redis_url


def test_override_beats_environment_beats_default():
    env = {"ENGINEFARM_CLUSTER": "from-env", "ENGINEFARM_PREFETCH": "7"}
    s = Settings.load(env=env, cluster="explicit")
    assert s.cluster == "explicit"  # override > env
    assert s.prefetch == 7  # env > default
    assert s.scheme == DEFAULTS.scheme  # default


def test_none_overrides_and_empty_env_values_are_ignored():
    s = Settings.load(env={"ENGINEFARM_CLUSTER": "from-env", "ENGINEFARM_PREFETCH": ""},
                      cluster=None, prefetch=None)
    assert s.cluster == "from-env"
    assert s.prefetch == DEFAULTS.prefetch


def test_load_reads_os_environ_when_env_not_given(monkeypatch):
    monkeypatch.setenv("ENGINEFARM_CLUSTER", "from-os-environ")
    assert Settings.load().cluster == "from-os-environ"
    # ...at call time, not import time.
    monkeypatch.setenv("ENGINEFARM_CLUSTER", "changed")
    assert Settings.load().cluster == "changed"


def test_unrelated_variables_are_ignored():
    s = Settings.load(env={"CLUSTER": "x", "ENGINEFARM_NOT_A_FIELD": "y", "enginefarm_cluster": "z"})
    assert s == DEFAULTS


@pytest.mark.parametrize("name", ["a", "A-b_9", "x" * 64, "t0123456789"])
def test_good_cluster_names(name):
    assert Settings.load(env={}, cluster=name).cluster == name


@pytest.mark.parametrize("name", ["", "a.b", "a:b", "a b", "a/b", "x" * 65, "é", "a*", "\na", "a\nb"])
def test_bad_cluster_names_are_refused(name):
    with pytest.raises(ConfigError) as info:
        Settings.load(env={}, cluster=name)
    assert "invalid cluster name" in str(info.value)
    assert isinstance(info.value, EnginefarmError)


def test_cluster_name_with_trailing_newline_is_refused():
    # "1-64 letters, digits, '-' or '_'": a newline is none of them, wherever it is.
    with pytest.raises(ConfigError):
        Settings.load(env={}, cluster="a\n")


def test_bad_cluster_name_from_environment_is_refused():
    with pytest.raises(ConfigError) as info:
        Settings.load(env={"ENGINEFARM_CLUSTER": "has.dot"})
    assert "'has.dot'" in str(info.value)


@pytest.mark.parametrize("var, raw, kind", [
    ("ENGINEFARM_PREFETCH", "many", "int"),
    ("ENGINEFARM_AMQP_HEARTBEAT_S", "2.5", "int"),
    ("ENGINEFARM_ENGINE_TIMEOUT_S", "ten", "float"),
    ("ENGINEFARM_HEARTBEAT_INTERVAL_S", "1,5", "float"),
])
def test_bad_environment_value_is_a_config_error(var, raw, kind):
    with pytest.raises(ConfigError) as info:
        Settings.load(env={var: raw})
    assert str(info.value) == f"{var}={raw!r} is not a valid {kind}"


@pytest.mark.parametrize("var", ["ENGINEFARM_ENGINE_TIMEOUT_S", "ENGINEFARM_HEARTBEAT_INTERVAL_S"])
def test_nan_timing_from_environment_is_refused(var):
    # float('nan') converts fine; the consistency check must still refuse it. (Registry sends
    # the timeout to a Lua script, where Redis rejects 'nan': "min or max is not a float".)
    with pytest.raises(ConfigError):
        Settings.load(env={var: "nan"})


# --- server URLs ----------------------------------------------------------------------------
@pytest.mark.parametrize("field, url", [
    ("amqp_url", "amqp://guest:guest@127.0.0.1:5672/%2F"),
    ("amqp_url", "amqps://u:p@broker.internal:5671/enginefarm"),
    ("amqp_url", "amqp://broker.internal/%2F"),
    ("amqp_url", "amqp://u:p@[::1]:5672/%2F"),
    ("redis_url", "redis://127.0.0.1:6379/0"),
    ("redis_url", "rediss://enginefarm:secret@redis.internal:6380/0"),
    ("redis_url", "redis://redis.internal"),
    ("redis_url", "redis://[::1]:6379/0"),
    ("redis_url", "unix:///run/redis/redis.sock?db=0"),
    ("redis_url", "redis+cluster://10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000"),
    ("redis_url", "rediss+cluster://enginefarm:secret@redis-a.internal:7000,[::1]/0"),
])
def test_server_urls_that_work_are_accepted(field, url):
    assert getattr(Settings.load(env={}, **{field: url}), field) == url


@pytest.mark.parametrize("var, url, says", [
    ("ENGINEFARM_REDIS_URL", "redis://127.0.0.1:notaport/0", "invalid port 'notaport'"),
    ("ENGINEFARM_REDIS_URL", "redis://:hunter2@127.0.0.1:70000/0", "invalid port '70000'"),
    ("ENGINEFARM_REDIS_URL", "redis://127.0.0.1:0/0", "invalid port '0'"),
    ("ENGINEFARM_REDIS_URL", "http://127.0.0.1:6379/0", "scheme 'http'"),
    ("ENGINEFARM_REDIS_URL", "127.0.0.1:6379", "scheme '127.0.0.1'"),
    ("ENGINEFARM_REDIS_URL", "redis:///0", "no host"),
    ("ENGINEFARM_REDIS_URL", "unix://", "no socket path"),
    ("ENGINEFARM_REDIS_URL", "redis+sentinel://:hunter2@s1:26379,s2:0/mymaster", "invalid port '0' for sentinel 2"),
    ("ENGINEFARM_REDIS_URL", "redis+sentinel://:hunter2@s1:26379/", "names no service"),
    ("ENGINEFARM_REDIS_URL", "memcache://127.0.0.1:11211", "scheme 'memcache'"),
    ("ENGINEFARM_REDIS_URL", "redis://a:6379/0,redis://:hunter2@b:6379/0", "takes one URL"),
    ("ENGINEFARM_REDIS_URL", "redis://127.0.0.1:6379/zero", "database number"),
    ("ENGINEFARM_REDIS_URL", "redis://a:6379,b:6379", "redis+cluster://host:port,host:port"),
    ("ENGINEFARM_REDIS_URL", "redis+cluster://:hunter2@a:7000,,b:7000", "node 2 of 3 names no host"),
    ("ENGINEFARM_REDIS_URL", "redis+cluster://:hunter2@a:7000,b:70000", "node 2 of 2 has an invalid port '70000'"),
    ("ENGINEFARM_REDIS_URL", "redis+cluster://:hunter2@", "node 1 of 1 names no host"),
    ("ENGINEFARM_REDIS_URL", "redis+cluster://:hunter2@a:7000/1", "has only database 0"),
    ("ENGINEFARM_REDIS_URL", "redis+cluster://:hunter2@a:7000?ssl=1", "takes no query options"),
    ("ENGINEFARM_AMQP_URL", "amqp://guest:hunter2@127.0.0.1:99999/%2F", "invalid port '99999'"),
    ("ENGINEFARM_AMQP_URL", "amqp://guest:hunter2@127.0.0.1:x/%2F", "invalid port 'x'"),
    ("ENGINEFARM_AMQP_URL", "redis://127.0.0.1:5672/%2F", "scheme 'redis'"),
    ("ENGINEFARM_AMQP_URL", "amqp://guest:hunter2@/%2F", "no host"),
    ("ENGINEFARM_AMQP_URL", "amqp://[::1/%2F", "not a URL"),
])
def test_a_bad_server_url_is_one_config_error_naming_the_setting(var, url, says):
    with pytest.raises(ConfigError) as info:
        Settings.load(env={var: url})
    message = str(info.value)
    assert message.startswith(f"{var} ") and says in message, message
    assert "\n" not in message and "hunter2" not in message


def test_a_redis_cluster_url_gives_its_nodes_and_credentials():
    assert parse_redis_cluster_url("rediss+cluster://ef:p%40ss%2C1@a.internal:7001, [::1] ,b:7003/0") == (
        RedisClusterURL(nodes=(("a.internal", 7001), ("::1", 6379), ("b", 7003)), username="ef",
                        password="p@ss,1", tls=True))
    assert parse_redis_cluster_url("redis+cluster://:secret@a:7000") == RedisClusterURL(
        nodes=(("a", 7000),), username=None, password="secret", tls=False)


# --- several AMQP URLs ---------------------------------------------------------------------
@pytest.mark.parametrize("value, urls", [
    ("amqp://a:5672/%2F", ["amqp://a:5672/%2F"]),
    ("amqp://a:5672/%2F,amqp://b:5673/%2F", ["amqp://a:5672/%2F", "amqp://b:5673/%2F"]),
    (" amqp://a/%2F , amqps://u:p%2Cq@b:5671/v ,", ["amqp://a/%2F", "amqps://u:p%2Cq@b:5671/v"]),
    ("", []),
    (" , ", []),
])
def test_split_urls_keeps_their_order_and_drops_blanks(value, urls):
    assert split_urls(value) == urls


def test_several_amqp_urls_are_accepted_from_arguments_and_environment():
    value = "amqp://guest:guest@10.0.0.1:5672/%2F,amqps://u:p@broker-2.internal:5671/ef"
    assert Settings.load(env={}, amqp_url=value).amqp_url == value
    assert Settings.load(env={"ENGINEFARM_AMQP_URL": value}).amqp_url == value


@pytest.mark.parametrize("url, says", [
    ("amqp://a:5672/%2F,redis://b:6379/0", "URL 2 of 2 has scheme 'redis'"),
    ("amqp://guest:hunter2@a:99999/%2F,amqp://b/%2F", "URL 1 of 2 has an invalid port '99999'"),
    ("amqp://a/%2F,amqp://b/%2F,amqp://guest:hunter2@/%2F", "URL 3 of 3 names no host"),
    ("amqp://a/%2F,b:5672", "URL 2 of 2 has scheme 'b'"),
    (" , ", "names no URL"),
])
def test_each_of_several_amqp_urls_is_checked(url, says):
    with pytest.raises(ConfigError) as info:
        Settings.load(env={"ENGINEFARM_AMQP_URL": url})
    message = str(info.value)
    assert message.startswith("ENGINEFARM_AMQP_URL (amqp_url) ") and says in message, message
    assert "hunter2" not in message


def test_broker_connection_tries_urls_in_turn_and_starts_after_a_lost_one():
    # Given a connection over three nodes (nothing is opened here: the order is pure)
    link = BrokerConnection("amqp://a/%2F, amqp://b/%2F,amqp://c/%2F")
    assert link.urls == ["amqp://a/%2F", "amqp://b/%2F", "amqp://c/%2F"]
    # When it has never connected, it starts with the first
    assert link._order() == [0, 1, 2]
    # When the connection it had to node b is lost, it tries c, then a, then b again
    link.generation, link.current = 1, 1
    assert link._order() == [2, 0, 1]
    link.current = 2
    assert link._order() == [0, 1, 2]
    # And one URL is simply retried
    single = BrokerConnection("amqp://a/%2F")
    single.generation = 3
    assert single._order() == [0]


def test_unknown_override_is_refused():
    with pytest.raises(ConfigError) as info:
        Settings.load(env={}, clustre="x", prefetchh=2)
    assert str(info.value) == "unknown settings: clustre, prefetchh"


@pytest.mark.parametrize("changes", [
    {"heartbeat_interval_s": 0.0},
    {"heartbeat_interval_s": -1.0},
    {"heartbeat_interval_s": 5.0, "engine_timeout_s": 5.0},
    {"heartbeat_interval_s": 5.0, "engine_timeout_s": 4.0},
])
def test_liveness_timings_must_be_consistent(changes):
    with pytest.raises(ConfigError) as info:
        Settings.load(env={}, **changes)
    assert "engine_timeout_s must be larger than heartbeat_interval_s" in str(info.value)


def test_inconsistent_timings_from_environment_are_refused():
    with pytest.raises(ConfigError):
        Settings.load(env={"ENGINEFARM_ENGINE_TIMEOUT_S": "1"})  # default interval is 2


def test_prefetch_must_be_positive():
    with pytest.raises(ConfigError):
        Settings.load(env={}, prefetch=0)


def test_replace_validates_too():
    s = Settings.load(env={}, cluster="c1")
    assert s.replace(engine_timeout_s=3.0, heartbeat_interval_s=0.5).engine_timeout_s == 3.0
    assert s.replace(cluster="c2").cluster == "c2" and s.cluster == "c1"
    with pytest.raises(ConfigError):
        s.replace(cluster="bad.name")


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.cluster = "x"  # type: ignore[misc]


def test_key_file_default_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_key_file() == os.path.join(str(tmp_path), "enginefarm", "key")
    assert Settings.load(env={}).resolved_key_file == default_key_file()
    assert Settings.load(env={}, key_file="/k").resolved_key_file == "/k"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert default_key_file() == os.path.join(os.path.expanduser("~"), ".config", "enginefarm", "key")


def test_settings_env_round_trips_every_field(tmp_path):
    # What a child daemon gets (see enginefarm.local) loads back to the same settings.
    s = Settings.load(env={}, cluster="round-trip", key_file=str(tmp_path / "k"),
                      heartbeat_interval_s=0.5, engine_timeout_s=3.0, amqp_heartbeat_s=2,
                      old_key_files="/a,/b")
    env = settings_env(s, base={})
    assert all(k.startswith(ENV_PREFIX) for k in env)
    assert Settings.load(env=env) == s
