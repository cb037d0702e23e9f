"""The ``enginefarm`` command: keys, daemons, a local cluster and the demo."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from .config import Settings, default_key_file
from .errors import EnginefarmError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def cluster_option(fn: Any) -> Any:
    return click.option("--cluster", envvar="ENGINEFARM_CLUSTER", default=None,
                        help="Cluster name (prefixes every queue and key).")(fn)


def parse_properties(pairs: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs; a VALUE that parses as JSON is taken as JSON, else as a string."""
    properties: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--property")
        key, value = pair.split("=", 1)
        try:
            properties[key] = json.loads(value)
        except ValueError:
            properties[key] = value
    return properties


class Fail(click.ClickException):
    """One clear line on stderr and exit code 1."""


def run_guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except EnginefarmError as exc:
        raise Fail(str(exc)) from exc


@click.group()
@click.option("--log-level", default="INFO", envvar="ENGINEFARM_LOG_LEVEL", show_default=True)
def main(log_level: str) -> None:
    """enginefarm: IPython-style engines and task farming on RabbitMQ and Redis."""
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("pika").setLevel(logging.WARNING)


@main.command()
@click.argument("path", required=False)
@click.option("--force", is_flag=True, help="Replace an existing key.")
def keygen(path: str | None, force: bool) -> None:
    """Write a new random cluster key (mode 0600) to PATH."""
    from .keys import generate_key_file

    target = path or Settings.load().key_file or default_key_file()
    kid = run_guarded(generate_key_file, target, force)
    click.echo(f"wrote key {kid} to {target}")


@main.command()
@cluster_option
@click.option("--property", "properties", multiple=True, metavar="KEY=VALUE",
              help="Engine property (repeatable); VALUE may be JSON.")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port.")
def engine(cluster: str | None, properties: tuple[str, ...], metrics_port: int | None) -> None:
    """Run one engine daemon in the foreground."""
    from .worker.engine import Engine

    settings = run_guarded(Settings.load, cluster=cluster, metrics_port=metrics_port)
    daemon = Engine(settings, parse_properties(properties))
    daemon.install_signal_handlers()
    code = run_guarded(daemon.run)
    sys.exit(code)


@main.command()
@cluster_option
@click.option("--scheme", default=None, envvar="ENGINEFARM_SCHEME",
              help="Scheduling scheme: fifo (default), lifo or priority.")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port.")
def scheduler(cluster: str | None, scheme: str | None, metrics_port: int | None) -> None:
    """Run the scheduler daemon (a second one waits as a standby)."""
    import signal

    from .schedulers.daemon import Scheduler

    settings = run_guarded(Settings.load, cluster=cluster, scheme=scheme, metrics_port=metrics_port)
    try:
        daemon = Scheduler(settings)
    except ValueError as exc:
        raise Fail(str(exc)) from exc
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    sys.exit(run_guarded(daemon.run))


@main.command()
@cluster_option
@click.option("-n", "--engines", "count", type=int, default=2, show_default=True, help="Number of engines.")
@click.option("--property", "properties", multiple=True, metavar="KEY=VALUE",
              help="Property given to every engine (repeatable).")
def cluster(cluster: str | None, count: int, properties: tuple[str, ...]) -> None:
    """Run a local cluster in the foreground; Ctrl-C or SIGTERM stops it."""
    from .local import LocalCluster

    settings = run_guarded(Settings.load, cluster=cluster)
    local = LocalCluster(settings, count, list(properties))
    local.install_signal_handlers()
    try:
        ids = run_guarded(local.start)
        click.echo(f"cluster {settings.cluster!r} ready: engines {ids}", err=False)
        sys.stdout.flush()
        local.wait()
    finally:
        local.stop()


@main.command()
@cluster_option
@click.option("-n", "--engines", "count", type=int, default=2, show_default=True)
def demo(cluster: str | None, count: int) -> None:
    """Start a local cluster, farm a few real tasks on it, print the results, stop it."""
    from .demo import run_demo

    settings = run_guarded(Settings.load, cluster=cluster)
    run_guarded(run_demo, settings, count)
