"""The ``enginefarm`` command: keys, daemons, a local cluster and the demo."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click

from .config import Settings, default_key_file
from .errors import EnginefarmError

if TYPE_CHECKING:
    from .client import Client

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
R = TypeVar("R")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def cluster_option(fn: F) -> F:
    return click.option("--cluster", envvar="ENGINEFARM_CLUSTER", default=None,
                        help="Cluster name (prefixes every queue and key).")(fn)


def server_options(fn: F) -> F:
    """Where the daemons find RabbitMQ and Redis (default: ENGINEFARM_AMQP_URL, ENGINEFARM_REDIS_URL)."""
    fn = click.option("--redis-url", default=None, metavar="URL",
                      help="Redis URL (default $ENGINEFARM_REDIS_URL, else redis://127.0.0.1:6379/0).")(fn)
    return click.option("--amqp-url", default=None, metavar="URL[,URL...]",
                        help="RabbitMQ URL, or several separated by commas (nodes of one cluster, "
                             "tried in turn); default $ENGINEFARM_AMQP_URL, else the loopback broker.")(fn)


def metrics_options(fn: F) -> F:
    fn = click.option("--metrics-addr", default=None, metavar="ADDRESS",
                      help="Address the metrics listen on (default 127.0.0.1; 0.0.0.0 for every interface).")(fn)
    return click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port.")(fn)


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


def run_guarded(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    from .store.query import QueryError

    try:
        return fn(*args, **kwargs)
    except (EnginefarmError, QueryError) as exc:
        raise Fail(str(exc)) from exc


@click.group()
@click.option("--log-level", default=None, envvar="ENGINEFARM_LOG_LEVEL",
              help="Log level (default: INFO for daemons, ERROR for admin commands).")
@click.pass_context
def main(ctx: click.Context, log_level: str | None) -> None:
    """enginefarm: IPython-style engines and task farming on RabbitMQ and Redis."""
    daemon = ctx.invoked_subcommand in ("engine", "scheduler", "cluster", "demo")
    level = log_level or ("INFO" if daemon else "ERROR")
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    # pika logs every failed connection attempt with a traceback; ours say it in one line.
    logging.getLogger("pika").setLevel(logging.CRITICAL)


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
@server_options
@metrics_options
def engine(cluster: str | None, properties: tuple[str, ...], amqp_url: str | None, redis_url: str | None,
           metrics_port: int | None, metrics_addr: str | None) -> None:
    """Run one engine daemon in the foreground."""
    from .worker.engine import Engine

    settings = run_guarded(Settings.load, cluster=cluster, amqp_url=amqp_url, redis_url=redis_url,
                           metrics_port=metrics_port, metrics_addr=metrics_addr)
    daemon = Engine(settings, parse_properties(properties))
    daemon.install_signal_handlers()
    code = run_guarded(daemon.run)
    sys.exit(code)


@main.command()
@cluster_option
@click.option("--scheme", default=None, envvar="ENGINEFARM_SCHEME",
              help="Scheduling scheme: fifo (default), lifo or priority.")
@server_options
@metrics_options
def scheduler(cluster: str | None, scheme: str | None, amqp_url: str | None, redis_url: str | None,
              metrics_port: int | None, metrics_addr: str | None) -> None:
    """Run the scheduler daemon (a second one waits as a standby)."""
    import signal

    from .schedulers.daemon import Scheduler

    settings = run_guarded(Settings.load, cluster=cluster, scheme=scheme, amqp_url=amqp_url, redis_url=redis_url,
                           metrics_port=metrics_port, metrics_addr=metrics_addr)
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
@server_options
def cluster(cluster: str | None, count: int, properties: tuple[str, ...], amqp_url: str | None,
            redis_url: str | None) -> None:
    """Run a local cluster in the foreground; Ctrl-C or SIGTERM stops it."""
    from .local import LocalCluster

    settings = run_guarded(Settings.load, cluster=cluster, amqp_url=amqp_url, redis_url=redis_url)
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


# --- admin commands ----------------------------------------------------------------------
def admin_client(cluster: str | None) -> Client:
    """A client that gives up quickly on an unreachable server (one clear line, exit 1)."""
    from .client import Client

    settings = run_guarded(Settings.load, cluster=cluster)
    return Client(settings=settings.replace(reconnect_window_s=min(settings.reconnect_window_s, 3.0)))


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(fn)


def emit(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        click.echo(render(data))


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value).replace("\n", " ")[:60]


def parse_targets(values: tuple[str, ...]) -> str | list[int]:
    if not values or values == ("all",):
        return "all"
    try:
        return [int(v) for item in values for v in item.split(",") if v]
    except ValueError:
        raise click.BadParameter("targets are engine ids (ints) or 'all'", param_hint="--targets") from None


def render_status(data: dict[str, Any]) -> str:
    # An engine claims quick tasks a few at a time: "running" lists them, comma-separated.
    engines = [{**e, "running": ",".join(e["running"]) or None} for e in data["engines"]]
    out = [f"cluster {data['cluster']!r}", "", "engines:",
           table(engines, ["engine_id", "alive", "host", "pid", "heartbeat_age_s", "running",
                           "queued", "properties"]),
           "", "queues (ready messages):"]
    out += [f"  {q}: {'missing' if n is None else n}" for q, n in data["queues"].items()]
    out += ["", "tasks: " + ", ".join(f"{k} {v}" for k, v in data["tasks"].items()),
            f"held by no engine yet: {data['unassigned']}; records in history: {data['history']}"]
    return "\n".join(out)


@main.command()
@cluster_option
@json_option
def status(cluster: str | None, as_json: bool) -> None:
    """Engines, queue depths and task counts of a cluster."""
    from .admin import cluster_status

    with admin_client(cluster) as client:
        emit(run_guarded(cluster_status, client), as_json, render_status)


@main.command("queue-status")
@cluster_option
@click.option("--targets", multiple=True, help="Engine ids (repeat or comma-separate); default all.")
@click.option("--verbose", is_flag=True, help="List task ids instead of counts.")
@json_option
def queue_status_cmd(cluster: str | None, targets: tuple[str, ...], verbose: bool, as_json: bool) -> None:
    """Per engine: waiting, running and finished tasks; and what waits for the scheduler."""
    with admin_client(cluster) as client:
        data = run_guarded(client.queue_status, parse_targets(targets), verbose)

    def render(d: dict[Any, Any]) -> str:
        rows = [{"engine_id": k, **v} for k, v in d.items() if isinstance(k, int)]
        totals = {k: v for k, v in d.items() if isinstance(k, str)}
        cols = ["engine_id", "queue", "running", "completed", "failed", "aborted"]
        return table(rows, cols) + "\n" + ", ".join(f"{k} {_cell(v)}" for k, v in totals.items())

    emit({str(k): v for k, v in data.items()}, as_json, lambda _: render(data))


@main.command()
@cluster_option
@click.argument("task_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every finished record of the cluster.")
@click.option("--engine", "engine_id", type=int, default=None, help="Finished records of one engine.")
@click.option("--queues", is_flag=True, help="Also drop messages waiting in RabbitMQ (their tasks are aborted).")
@json_option
def purge(cluster: str | None, task_ids: tuple[str, ...], everything: bool, engine_id: int | None,
          queues: bool, as_json: bool) -> None:
    """Remove results and history (and with --queues, waiting messages)."""
    from .admin import purge as do_purge

    if not (task_ids or everything or engine_id is not None or queues):
        raise click.UsageError("say what to purge: TASK_ID..., --all, --engine ID or --queues")
    with admin_client(cluster) as client:
        report = run_guarded(do_purge, client, list(task_ids), everything, engine_id, queues)

    def render(r: dict[str, Any]) -> str:
        lines = [f"removed {r['records']} task record(s)"]
        if queues:
            lines.append(f"aborted {r['aborted']} pending task(s)")
            lines += [f"purged {n} message(s) from {q}" for q, n in r["messages"].items()]
        return "\n".join(lines)

    emit(report, as_json, render)


def parse_query(text: str) -> Any:
    """The JSON of ``--query``; nesting too deep for the parser is refused as too deep a query."""
    from .store.query import TOO_DEEP

    try:
        return json.loads(text)
    except RecursionError:
        raise Fail(TOO_DEEP) from None
    except ValueError as exc:
        raise Fail(f"--query is not valid JSON: {exc}") from exc


@main.command()
@cluster_option
@click.option("--query", "query_text", default=None, help='Mongo-style JSON, e.g. \'{"status": "failed"}\'.')
@click.option("--status", "status_filter", default=None, help="Only tasks in this status.")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
def tasks(cluster: str | None, query_text: str | None, status_filter: str | None, limit: int,
          as_json: bool) -> None:
    """The task history, oldest first."""
    query: dict[str, Any] = {}
    if query_text:
        query = parse_query(query_text)
        if not isinstance(query, dict):
            raise Fail("--query must be a JSON object")
    if status_filter:
        query["status"] = status_filter
    with admin_client(cluster) as client:
        rows = run_guarded(client.db_query_limited, query, limit)
    cols = ["task_id", "kind", "status", "engine_id", "attempts", "submitted", "summary", "error"]
    if any("invalid" in row for row in rows):
        cols.append("invalid")  # fields that did not decode, named
    emit(rows, as_json, lambda r: table([{**x, "error": (x.get("error") or {}).get("ename")} for x in r], cols))


@main.command()
@cluster_option
@click.argument("task_ids", nargs=-1, required=True)
@json_option
def abort(cluster: str | None, task_ids: tuple[str, ...], as_json: bool) -> None:
    """Abort tasks that have not started."""
    from .admin import abort as do_abort

    with admin_client(cluster) as client:
        result = run_guarded(do_abort, client, list(task_ids))
    emit(result, as_json, lambda r: "\n".join(
        f"{t}: {'aborted' if ok else 'not aborted (already running or finished)'}" for t, ok in r.items()))


@main.command()
@cluster_option
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--wait", "wait_s", type=float, default=None, metavar="SECONDS",
              help="Wait up to SECONDS for the new tasks (progress bar on a terminal).")
@json_option
def resubmit(cluster: str | None, task_ids: tuple[str, ...], wait_s: float | None, as_json: bool) -> None:
    """Run tasks again as new tasks (in flight or finished); prints the new ids."""
    from .admin import require_known, resubmit as do_resubmit

    with admin_client(cluster) as client:
        run_guarded(require_known, client, list(task_ids))
        mapping = run_guarded(do_resubmit, client, list(task_ids))
        emit(mapping, as_json, lambda m: "\n".join(f"{old} -> {new}" for old, new in m.items()))
        if wait_s is not None:
            wait_with_progress(client, list(mapping.values()), wait_s)


@main.command()
@cluster_option
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--timeout", "timeout_s", type=float, default=None, help="Give up after this many seconds.")
@click.option("--stream", is_flag=True, help="Print the tasks' output as it arrives, each line prefixed "
              "by its stream and engine ([stdout:3] ...), instead of a progress bar.")
def wait(cluster: str | None, task_ids: tuple[str, ...], timeout_s: float | None, stream: bool) -> None:
    """Wait until tasks finish (progress bar on a terminal); exit 1 if any failed, 2 on timeout."""
    from .admin import require_known

    with admin_client(cluster) as client:
        run_guarded(require_known, client, list(task_ids))
        wait_with_progress(client, list(task_ids), timeout_s, stream)


def wait_with_progress(client: Any, task_ids: list[str], timeout_s: float | None, stream: bool = False) -> None:
    from .client import AsyncResult

    result = AsyncResult(client, task_ids)
    if stream:
        finished = run_guarded(result.stream_outputs, None, timeout_s)
    else:
        finished = run_guarded(result.wait_interactive, 0.25, timeout_s, sys.stderr)
    if not finished:
        click.echo(f"Error: {len(task_ids) - result.progress} of {len(task_ids)} tasks still running", err=True)
        sys.exit(2)
    failed = [t for t in task_ids if isinstance(client.results[t], BaseException)]
    for task_id in failed:
        click.echo(f"{task_id}: {client.results[task_id]}", err=True)
    click.echo(f"{len(task_ids) - len(failed)} completed, {len(failed)} failed")
    if failed:
        sys.exit(1)


@main.command()
@cluster_option
@click.option("--targets", multiple=True, help="Engine ids; default all.")
@click.option("--hub", is_flag=True, help="Stop the schedulers too.")
@json_option
def shutdown(cluster: str | None, targets: tuple[str, ...], hub: bool, as_json: bool) -> None:
    """Stop engines (after their queued work) and, with --hub, the schedulers."""
    with admin_client(cluster) as client:
        chosen = parse_targets(targets)
        ids = run_guarded(lambda: client.ids if chosen == "all" else chosen)
        if ids:
            run_guarded(client.shutdown, chosen, hub, False)
        elif hub:
            run_guarded(client.shutdown, None, True)
    emit({"engines": ids, "hub": hub}, as_json,
         lambda d: f"asked engines {d['engines']} to stop" + (" and the schedulers" if hub else ""))
