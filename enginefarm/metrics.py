"""Prometheus metrics of a daemon. Nothing is registered or served at import time:
a daemon builds its ``Metrics`` and calls ``serve`` when it has a port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .errors import ConfigError

TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


class Metrics:
    """Every metric enginefarm exports; an engine and a scheduler each use the ones they own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tasks = Counter("enginefarm_tasks_total", "Tasks finished by this process, by outcome.",
                             ["outcome"], registry=r)
        self.run_seconds = Histogram("enginefarm_task_run_seconds", "Time a task ran on an engine.",
                                     buckets=TIME_BUCKETS, registry=r)
        self.wait_seconds = Histogram("enginefarm_task_queue_wait_seconds",
                                      "Time from submission until an engine started the task.",
                                      buckets=TIME_BUCKETS, registry=r)
        self.in_progress = Gauge("enginefarm_tasks_in_progress", "Tasks running now.", registry=r)
        self.engines = Gauge("enginefarm_engines_registered", "Live engines in the cluster.", registry=r)
        self.pending = Gauge("enginefarm_pending_tasks", "Load-balanced tasks waiting for an engine.",
                             ["scheme"], registry=r)
        self.dead_lettered = Counter("enginefarm_messages_dead_lettered_total",
                                     "Messages refused and dead-lettered, by reason.", ["reason"], registry=r)
        self.retries = Counter("enginefarm_task_retries_total",
                               "Load-balanced tasks handed back to the scheduler to run again.", ["reason"],
                               registry=r)
        self.engine_deaths = Counter("enginefarm_engine_deaths_total",
                                     "Engines this process found dead and recovered from.", registry=r)
        self.errors = Counter("enginefarm_errors_total",
                              "Malformed items and unexpected failures a daemon logged and survived.",
                              ["component", "kind"], registry=r)
        self.history_bytes = Gauge("enginefarm_redis_history_bytes",
                                   "Estimated Redis memory used by the cluster's task records.", registry=r)
        self.history_records = Gauge("enginefarm_redis_history_records",
                                     "Task records in the cluster's history.", registry=r)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose /metrics on ``addr``:``port`` (a background thread of prometheus-client).

        Raises:
            ConfigError: the address is not one of this host's, or the port is taken.
        """
        try:
            start_http_server(port, addr=addr, registry=self.registry)
        except (OSError, OverflowError) as exc:
            raise ConfigError(f"cannot serve metrics on {addr} port {port} "
                              f"(ENGINEFARM_METRICS_ADDR, ENGINEFARM_METRICS_PORT): {exc}") from exc
