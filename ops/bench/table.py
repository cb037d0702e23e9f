"""The benchmark table: which rows each scenario has, their ratios and their targets.

Every result line a system module prints is (scenario, system, metric, value); a value of None
with a "refused" reason is a size the system refuses by design (enginefarm's message cap). A
row shows the median over repetitions with min-max; a peer's row also shows enginefarm's
median divided by the peer's, once per enginefarm form the section compares against (e.g.
`lb` and `dv` in (b)). A target is checked on one of those ratios, or on a row's own value,
and lands in the PASS/MISS list under the table.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LABEL = {"a1": "a'"}  # scenario ids to what the table calls them


@dataclass
class Target:
    text: str  # shown in the target column, e.g. ">= 1.5x"
    check: Callable[[float], bool]
    goal: str  # what is checked, in the PASS/MISS list
    on: str | None = None  # the ratio tag checked; None: the row's own median


@dataclass
class Row:
    label: str
    system: str  # as the results name it ("pika-rpc" for the floor's RPC)
    metric: str
    targets: list[Target] = field(default_factory=list)
    vs: dict[str, str] | None = None  # ratio tag -> enginefarm metric; None: the section's


@dataclass
class Section:
    scenario: str
    title: str
    legend: str
    unit: str
    ef: dict[str, str]  # ratio tag -> enginefarm metric ("" for the single form)
    rows: list[Row]
    units: dict[str, str] = field(default_factory=dict)  # metric -> unit, where not the section's


THROUGHPUT = "higher is better; ratio = enginefarm/peer, > 1 means enginefarm is faster"
LATENCY = "lower is better; ratio = enginefarm/peer, < 1 means enginefarm is faster"


def at_least(x: float) -> Callable[[float], bool]:
    return lambda r: r >= x


def above(x: float) -> Callable[[float], bool]:
    return lambda r: r > x


def at_most(x: float) -> Callable[[float], bool]:
    return lambda r: r <= x


def below(x: float) -> Callable[[float], bool]:
    return lambda r: r < x


def size_label(mib: int) -> str:
    return f"{mib // 1024}GiB" if mib % 1024 == 0 else f"{mib}MiB"


def sections(counts: dict[str, Any]) -> list[Section]:
    sizes = [int(s) for s in str(counts["sizes"]).split(",") if s.strip()]
    return [
        Section("a", f"(a) {counts['tasks']:,} trivial load-balanced tasks in one batch, first submit to last result",
                f"tasks/s, {THROUGHPUT}", "tasks/s", {"": "throughput"}, [
                    Row("enginefarm  submit_many + barrier", "enginefarm", "throughput"),
                    Row("celery      delay + get", "celery", "throughput"),
                    Row("dramatiq    send + get_result", "dramatiq", "throughput",
                        [Target(">= 1.5x", at_least(1.5), "submit_many vs dramatiq", "")]),
                    Row("ipyparallel map(chunksize=1)", "ipyparallel", "throughput"),
                    Row("floor       pika + redis-py", "pika+redis", "throughput"),
                ]),
        Section("a1", f"(a') {counts['tasks']:,} trivial tasks, one call per task, then waited",
                f"tasks/s, {THROUGHPUT} (sub: c.submit loop, apa: lview.apply_async loop)", "tasks/s",
                {"sub": "throughput_submit", "apa": "throughput_apply_async"}, [
                    Row("enginefarm  c.submit(MapTask) loop", "enginefarm", "throughput_submit"),
                    Row("enginefarm  lview.apply_async loop", "enginefarm", "throughput_apply_async"),
                    Row("dramatiq    add.send loop", "dramatiq", "throughput",
                        [Target(">= 1.5x", at_least(1.5), "c.submit loop vs dramatiq", "sub"),
                         Target(">= 1.5x", at_least(1.5), "apply_async loop vs dramatiq", "apa")]),
                    Row("ray         f.remote loop", "ray", "throughput",
                        [Target("> 1x", above(1.0), "c.submit loop vs ray", "sub"),
                         Target("> 1x", above(1.0), "apply_async loop vs ray", "apa")]),
                    Row("ipyparallel lview.apply_async loop", "ipyparallel", "throughput"),
                    Row("dask        client.submit loop", "dask", "throughput"),
                ]),
        Section("b", f"(b) {counts['roundtrips']} sequential submit-then-get round trips, p50",
                f"ms, {LATENCY} (lb: load-balanced, dv: direct)", "ms", {"lb": "p50_lb", "dv": "p50_direct"}, [
                    Row("enginefarm  lview.apply (lb)", "enginefarm", "p50_lb"),
                    Row("enginefarm  c[0].apply (direct)", "enginefarm", "p50_direct"),
                    Row("celery      delay().get()", "celery", "p50"),
                    Row("dramatiq    send().get_result()", "dramatiq", "p50",
                        [Target("lb <= 1x", at_most(1.0), "lb p50 vs dramatiq", "lb")]),
                    Row("ipyparallel lview.apply_sync", "ipyparallel", "p50_lb"),
                    Row("ipyparallel rc[0].apply_sync", "ipyparallel", "p50_direct"),
                    Row("ray         ray.get(f.remote())", "ray", "p50"),
                    Row("dask        client.submit().result()", "dask", "p50"),
                    Row("floor       bare pika RPC", "pika-rpc", "p50",
                        [Target("dv <= 1.3x", at_most(1.3), "direct p50 vs pika RPC", "dv")]),
                ]),
        Section("b", f"(b) {counts['roundtrips']} sequential submit-then-get round trips, p99",
                f"ms, {LATENCY}", "ms", {"lb": "p99_lb", "dv": "p99_direct"}, [
                    Row("enginefarm  lview.apply (lb)", "enginefarm", "p99_lb"),
                    Row("enginefarm  c[0].apply (direct)", "enginefarm", "p99_direct"),
                    Row("celery      delay().get()", "celery", "p99"),
                    Row("dramatiq    send().get_result()", "dramatiq", "p99"),
                    Row("ipyparallel lview.apply_sync", "ipyparallel", "p99_lb"),
                    Row("ipyparallel rc[0].apply_sync", "ipyparallel", "p99_direct"),
                    Row("ray         ray.get(f.remote())", "ray", "p99"),
                    Row("dask        client.submit().result()", "dask", "p99"),
                    Row("floor       bare pika RPC", "pika-rpc", "p99"),
                ]),
        Section("c", f"(c) map of {counts['items']:,} trivial items, each system's batch forms",
                f"items/s, {THROUGHPUT} (lv: lview.map, dv: DirectView.map)", "items/s",
                {"lv": "map_lview", "dv": "map_dv"}, [
                    Row("enginefarm  lview.map (auto chunks)", "enginefarm", "map_lview"),
                    Row("enginefarm  c[:].map_sync", "enginefarm", "map_dv"),
                    Row("celery      add.chunks(.., 1000)", "celery", "map_throughput"),
                    Row("dramatiq    group of add_many(1000)", "dramatiq", "map_throughput"),
                    Row("ipyparallel lview.map(chunksize=10000)", "ipyparallel", "map_lview"),
                    Row("ipyparallel rc[:].map_sync", "ipyparallel", "map_dv"),
                    Row("ray         add_many.remote x 10000", "ray", "map_remote",
                        [Target(">= 1x", at_least(1.0), "lview.map vs ray's best", "lv"),
                         Target(">= 1x", at_least(1.0), "DirectView.map vs ray's best", "dv")]),
                    Row("dask        bag, partitions of 10000", "dask", "map_bag"),
                    Row("dask        client.map add_many x 10000", "dask", "map_client"),
                ]),
        Section("d", "(d) worker / cluster start to first result",
                f"seconds, {LATENCY}", "s", {"": "start_to_first_result"}, [
                    Row("enginefarm  enginefarm cluster -n 2", "enginefarm", "start_to_first_result"),
                    Row("celery      celery worker -c 2", "celery", "start_to_first_result"),
                    Row("dramatiq    dramatiq -p 2 -t 1", "dramatiq", "start_to_first_result",
                        [Target("<= 1x", at_most(1.0), "start vs dramatiq", "")]),
                    Row("ipyparallel Cluster(n=2)", "ipyparallel", "start_to_first_result"),
                    Row("ray         ray.init(num_cpus=2)", "ray", "start_to_first_result"),
                    Row("dask        LocalCluster(n_workers=2)", "dask", "start_to_first_result"),
                ]),
        Section("e", "(e) enginefarm footprint", "lower is better; no peers", "B", {}, [
            Row("idle engine RSS, MB (supervisor + child)", "enginefarm", "idle_engine_rss",
                [Target("< 60 MB", below(60), "idle engine RSS")]),
            Row("Redis B per finished task (MEMORY USAGE)", "enginefarm", "redis_bytes_per_record",
                [Target("< 2 KiB", below(2048), "Redis per record")]),
            Row("Redis B per task, all cluster keys", "enginefarm", "redis_bytes_per_task_keys",
                [Target("< 2 KiB", below(2048), "Redis per task (all keys)")]),
            Row("Redis B per task, INFO used_memory delta", "enginefarm", "redis_bytes_per_task_delta"),
        ], units={"idle_engine_rss": "MB"}),
        Section("f", f"(f) push and pull of a numpy array to / from {counts['workers']} engines",
                f"MB/s of payload (10^6 B, all engines together), {THROUGHPUT}", "MB/s", {},
                [row for mib in sizes for row in transfer_rows(mib)]),
        Section("g", f"(g) scatter then gather of {counts['elements']:,} float64 "
                     f"({counts['elements'] * 8 / 1e6:,.0f} MB) across {counts['workers']} engines",
                f"MB/s of payload, {THROUGHPUT}; round: both ways over both times", "MB/s", {},
                [row for step in ("scatter", "gather", "round") for row in scatter_rows(step)]),
    ]


def transfer_rows(mib: int) -> list[Row]:
    rows = []
    for way in ("push", "pull"):
        metric = f"{way}_{size_label(mib)}"
        works = [Target("works", lambda v: True, f"{way} of 1 GiB works")] if mib == 1024 else []
        rows += [
            Row(f"enginefarm  dv.{way} {size_label(mib)}", "enginefarm", metric, works),
            Row(f"ipyparallel dv.{way} {size_label(mib)}", "ipyparallel", metric, vs={"": metric}),
            Row(f"ray         {'put + actor' if way == 'push' else 'actor returns'} {size_label(mib)}", "ray",
                metric, [Target(">= 1x", at_least(1.0), f"{way} {size_label(mib)} vs ray", "")], vs={"": metric}),
        ]
    return rows


def scatter_rows(step: str) -> list[Row]:
    ipp_target = [Target("> 1x", above(1.0), "scatter + gather vs ipyparallel", "")] if step == "round" else []
    return [
        Row(f"enginefarm  dv.{step}" if step != "round" else "enginefarm  scatter + gather", "enginefarm", step),
        Row(f"ipyparallel {step}" if step != "round" else "ipyparallel scatter + gather", "ipyparallel", step,
            ipp_target, vs={"": step}),
        Row(f"ray         {step} (actors)" if step != "round" else "ray         scatter + gather", "ray", step,
            vs={"": step}),
        Row(f"dask        client.{step}" if step != "round" else "dask        scatter + gather", "dask", step,
            vs={"": step}),
    ]


# --- rendering ---------------------------------------------------------------------------------
def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("tasks/s", "items/s", "B"):
        return f"{value:,.0f}"
    if unit in ("MB", "MB/s"):
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return f"{value:.2f}"


@dataclass
class Figures:
    """What the results say about one (scenario, system, metric)."""

    values: list[float] = field(default_factory=list)
    refused: int = 0
    reason: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


def collect(results: list[dict[str, Any]]) -> dict[tuple[str, str, str], Figures]:
    figures: dict[tuple[str, str, str], Figures] = {}
    for r in results:
        f = figures.setdefault((r["scenario"], r["system"], r["metric"]), Figures())
        if r.get("value") is None:
            f.refused += 1
            f.reason = f.reason or str(r.get("refused", ""))
        else:
            f.values.append(float(r["value"]))
    return figures


def ratios(section: Section, row: Row, figures: dict[tuple[str, str, str], Figures]) -> dict[str, float | str]:
    """enginefarm's median / this row's, per tag; a string where one side has no figure."""
    out: dict[str, float | str] = {}
    mine = figures.get((section.scenario, row.system, row.metric), Figures())
    for tag, metric in (row.vs if row.vs is not None else section.ef).items():
        ef = figures.get((section.scenario, "enginefarm", metric), Figures())
        if ef.median is not None and mine.median:
            out[tag] = ef.median / mine.median
        elif ef.refused and ef.median is None:
            out[tag] = "ef refused"
        elif mine.refused and mine.median is None:
            out[tag] = "peer refused"
        else:
            out[tag] = "no figure"
    return out


def ratio_text(values: dict[str, float | str]) -> str:
    parts = []
    for tag, r in values.items():
        shown = f"{r:.2f}" if isinstance(r, float) else r
        parts.append(f"{shown}x" if tag == "" and isinstance(r, float) else f"{tag} {shown}".strip())
    return " ".join(parts)


def verdict(target: Target, figure: Figures, ratio: dict[str, float | str]) -> tuple[bool, str]:
    if target.on is None:
        if figure.median is None:
            return False, "refused" if figure.refused else "no result"
        return bool(target.check(figure.median)), ""
    r = ratio.get(target.on, "no figure")
    if isinstance(r, str):
        return r == "peer refused", r  # enginefarm does what the peer refuses: ahead of it
    return bool(target.check(r)), f"{r:.2f}x"


def render(results: list[dict[str, Any]], failed: list[tuple[str, str, str]], counts: dict[str, Any],
           heading: str) -> tuple[str, list[str]]:
    """The table and the PASS/MISS list. ``failed``: (scenario, module system, note) of failed runs."""
    figures = collect(results)
    lines, verdicts = [heading], []
    header = f"{'':46} {'median':>10} {'min–max':>21} {'n':>3} {'ef/peer':>17}  target"
    ran = {r["scenario"] for r in results} | {f[0] for f in failed}
    for section in sections(counts):
        if section.scenario not in ran:
            continue
        lines += ["", section.title, f"  [{section.legend}]", header]
        for row in section.rows:
            unit = section.units.get(row.metric, section.unit)
            fig = figures.get((section.scenario, row.system, row.metric), Figures())
            broke = any(s == section.scenario and m == MODULE_OF.get(row.system, row.system) for s, m, _ in failed)
            ratio = ratios(section, row, figures) if row.system != "enginefarm" else {}
            if fig.median is not None:
                spread = f"{fmt(min(fig.values), unit)}–{fmt(max(fig.values), unit)}"
                if fig.refused:
                    spread += f" ({fig.refused} refused)"
                median = fmt(fig.median, unit)
            elif fig.refused:
                median, spread = "refused", "refused"
            else:
                median, spread = "-", "FAILED" if broke else "not run"
            status = []
            for target in row.targets:
                passed, shown = verdict(target, fig, ratio)
                word = "PASS" if passed else "MISS"
                status.append(f"{target.text} {word}")
                if not shown:
                    shown = f"{fmt(fig.median, unit)} {unit}"
                verdicts.append(f"({LABEL.get(section.scenario, section.scenario)}) {target.goal:<34} "
                                f"{target.text:<10} {shown:<16} {word}")
            count = len(fig.values) + fig.refused
            lines.append(f"  {row.label:44} {median:>10} {spread:>21} {count:>3} {ratio_text(ratio):>17}  "
                         + ", ".join(status))
    lines += ["", "targets:"] + [f"  {v}" for v in verdicts]
    return "\n".join(lines), verdicts


# result "system" names -> the module that produced them (the floor prints two kinds)
MODULE_OF = {"pika+redis": "floor", "pika-rpc": "floor"}
