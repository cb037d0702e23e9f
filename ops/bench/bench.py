"""The benchmark driver: runs every system's scenarios in subprocesses and prints one table.

    python ops/bench/bench.py [--quick] [--reps N] [--scenarios abcde] [--systems enginefarm,celery,...]

Each (scenario, repetition, system) is one subprocess of that system's module (sys_*.py), run
with that system's python: enginefarm with the repository's .venv, the peers with
ops/bench/.venv-peers'. The module starts its own workers, measures once, stops them by PID and
deletes its queues and keys; it prints JSON lines, which this driver collects. Repetitions are
interleaved (rep 1 of every system, then rep 2, ...) with the system order rotated each time,
so a burst of load from other work on the machine hits every system alike.

Raw results, each subprocess's log and the table land in --out (default: a new directory under
$TMPDIR).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
REDIS_URL = "redis://127.0.0.1:6379/0"

# module, which python ("ef" or "peers"), scenarios it takes part in
SYSTEMS = {
    "enginefarm": ("sys_enginefarm.py", "ef", "abcde"),
    "celery": ("sys_celery.py", "peers", "abcd"),
    "dramatiq": ("sys_dramatiq.py", "peers", "abcd"),
    "ipyparallel": ("sys_ipyparallel.py", "peers", "abcd"),
    "floor": ("sys_floor.py", "peers", "ab"),
}
SHORT = {"enginefarm": "ef", "celery": "cel", "dramatiq": "dra", "ipyparallel": "ipp", "floor": "flr"}

FULL = {"tasks": 5000, "roundtrips": 300, "items": 100_000, "reps": 3, "timeout_s": 300}
QUICK = {"tasks": 1000, "roundtrips": 100, "items": 20_000, "reps": 1, "timeout_s": 150}


def say(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


@dataclass
class Run:
    scenario: str
    system: str
    rep: int
    name: str
    seconds: float = 0.0
    ok: bool = False
    error: str = ""
    log: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)


def run_one(run: Run, python: str, module: str, counts: dict[str, int], env: dict[str, str], out: str) -> None:
    argv = [python, os.path.join(HERE, module), run.scenario, "--name", run.name,
            "--tasks", str(counts["tasks"]), "--roundtrips", str(counts["roundtrips"]),
            "--items", str(counts["items"]), "--workers", "2", "--timeout", str(counts["timeout_s"] // 2)]
    run.log = os.path.join(out, "logs", f"{run.scenario}-{run.rep}-{run.system}.log")
    t0 = time.monotonic()
    with open(run.log, "wb") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                cwd=HERE, start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=counts["timeout_s"])
        except subprocess.TimeoutExpired:
            # SIGTERM lets the module run its cleanup; its process group goes after a grace period.
            proc.send_signal(signal.SIGTERM)
            try:
                stdout, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, _ = proc.communicate()
            run.error = f"timed out after {counts['timeout_s']}s"
    run.seconds = time.monotonic() - t0
    for line in stdout.decode(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                run.results.append(json.loads(line))
            except ValueError:
                pass
    if proc.returncode != 0 and not run.error:
        run.error = f"exit code {proc.returncode}: {last_line(run.log)}"
    run.ok = not run.error and bool(run.results)
    if not run.ok and not run.error:
        run.error = "no result printed"


def last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as handle:
            lines = [line.strip() for line in handle if line.strip()]
        return lines[-1][:200] if lines else ""
    except OSError:
        return ""


# --- the table -------------------------------------------------------------------------------
@dataclass
class Row:
    label: str
    system: str
    metric: str
    target: str = ""  # text shown in the target column
    check: Any = None  # function(value, ratios) -> bool, for the target
    goal: str = ""  # what the target is about, in the summary


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("tasks/s", "items/s", "B"):
        return f"{value:,.0f}"
    if unit == "MB":
        return f"{value:.1f}"
    if unit == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return f"{value:.2f}"


SECTIONS = [
    ("a", "throughput", "tasks/s", "(a) {tasks:,} trivial load-balanced tasks, first submit to last result",
     "tasks/s, higher is better; ratio = enginefarm/peer, > 1 means enginefarm is faster", [
         Row("enginefarm  submit_many + barrier", "enginefarm", "throughput"),
         Row("celery      delay + get", "celery", "throughput", ">= 3x", lambda r: r >= 3,
             "enginefarm vs celery"),
         Row("dramatiq    send + get_result", "dramatiq", "throughput", ">= 1.5x", lambda r: r >= 1.5,
             "enginefarm vs dramatiq"),
         Row("ipyparallel map(chunksize=1)", "ipyparallel", "throughput"),
         Row("floor       pika + redis-py", "pika+redis", "throughput"),
     ]),
    ("b", "p50", "ms", "(b) {roundtrips} sequential submit-then-get round trips, p50",
     "ms, lower is better; ratio = enginefarm/peer (lb: load-balanced, dv: direct), < 1 means "
     "enginefarm has lower latency", [
         Row("enginefarm  lview.apply (lb)", "enginefarm", "p50_lb"),
         Row("enginefarm  c[0].apply (direct)", "enginefarm", "p50_direct"),
         Row("celery      delay().get()", "celery", "p50"),
         Row("dramatiq    send().get_result()", "dramatiq", "p50", "lb <= 1x", lambda r: r["lb"] <= 1.0,
             "lb p50 vs dramatiq"),
         Row("ipyparallel lview.apply_sync", "ipyparallel", "p50_lb"),
         Row("ipyparallel rc[0].apply_sync", "ipyparallel", "p50_direct"),
         Row("floor       bare pika RPC", "pika-rpc", "p50", "dv <= 1.3x", lambda r: r["dv"] <= 1.3,
             "direct p50 vs pika RPC"),
     ]),
    ("b", "p99", "ms", "(b) {roundtrips} sequential submit-then-get round trips, p99",
     "ms, lower is better; ratio = enginefarm/peer, < 1 means enginefarm has lower latency", [
         Row("enginefarm  lview.apply (lb)", "enginefarm", "p99_lb"),
         Row("enginefarm  c[0].apply (direct)", "enginefarm", "p99_direct"),
         Row("celery      delay().get()", "celery", "p99"),
         Row("dramatiq    send().get_result()", "dramatiq", "p99"),
         Row("ipyparallel lview.apply_sync", "ipyparallel", "p99_lb"),
         Row("ipyparallel rc[0].apply_sync", "ipyparallel", "p99_direct"),
         Row("floor       bare pika RPC", "pika-rpc", "p99"),
     ]),
    ("c", "map", "items/s", "(c) map of {items:,} trivial items",
     "items/s, higher is better; ratio = enginefarm/peer, > 1 means enginefarm is faster", [
         Row("enginefarm  lview.map (auto chunks)", "enginefarm", "map_throughput", ">= 20,000/s",
             lambda v: v >= 20_000, "enginefarm items/s"),
         Row("celery      add.chunks(.., 1000)", "celery", "map_throughput", "> 1x", lambda r: r > 1,
             "enginefarm vs celery"),
         Row("dramatiq    group of add_many(1000)", "dramatiq", "map_throughput", "> 1x", lambda r: r > 1,
             "enginefarm vs dramatiq"),
         Row("ipyparallel map(chunksize=1000)", "ipyparallel", "map_throughput", "> 1x", lambda r: r > 1,
             "enginefarm vs ipyparallel"),
     ]),
    ("d", "start", "s", "(d) worker / cluster start to first result",
     "seconds, lower is better; ratio = enginefarm/peer, < 1 means enginefarm starts faster", [
         Row("enginefarm  enginefarm cluster -n 2", "enginefarm", "start_to_first_result", "< 1 s",
             lambda v: v < 1.0, "enginefarm start"),
         Row("celery      celery worker -c 2", "celery", "start_to_first_result"),
         Row("dramatiq    dramatiq -p 2 -t 1", "dramatiq", "start_to_first_result"),
         Row("ipyparallel Cluster(n=2)", "ipyparallel", "start_to_first_result"),
     ]),
    ("e", "rss", "MB", "(e) enginefarm footprint", "lower is better; no peers", [
         Row("idle engine RSS, MB (supervisor + child)", "enginefarm", "idle_engine_rss", "< 60 MB",
             lambda v: v < 60, "idle engine RSS"),
         Row("Redis B per finished task (MEMORY USAGE)", "enginefarm", "redis_bytes_per_record", "< 2 KiB",
             lambda v: v < 2048, "Redis per record"),
         Row("Redis B per task, all cluster keys", "enginefarm", "redis_bytes_per_task_keys", "< 2 KiB",
             lambda v: v < 2048, "Redis per task (all keys)"),
         Row("Redis B per task, INFO used_memory delta", "enginefarm", "redis_bytes_per_task_delta"),
     ]),
]
UNITS_E = {"idle_engine_rss": "MB", "redis_bytes_per_record": "B", "redis_bytes_per_task_keys": "B",
           "redis_bytes_per_task_delta": "B"}


def collect(runs: list[Run]) -> dict[tuple[str, str, str], list[float]]:
    values: dict[tuple[str, str, str], list[float]] = {}
    for run in runs:
        for r in run.results:
            values.setdefault((r["scenario"], r["system"], r["metric"]), []).append(float(r["value"]))
    return values


def render(runs: list[Run], counts: dict[str, int], reps: int, quick: bool) -> tuple[str, list[str]]:
    values = collect(runs)
    med = {k: statistics.median(v) for k, v in values.items()}
    lines, verdicts = [], []
    header = f"{'':44} {'median':>10} {'min–max':>21} {'n':>3} {'ef/peer':>17}  target"
    mode = "QUICK (1 repetition, smaller counts)" if quick else f"FULL ({reps} repetitions)"
    lines.append(f"enginefarm benchmark — {mode}; medians over repetitions; 2 workers per system")
    for scenario, _key, unit, title, legend, rows in SECTIONS:
        if not any(k[0] == scenario for k in values) and not any(r.scenario == scenario for r in runs):
            continue
        lines += ["", title.format(**counts), f"  [{legend}]", header]
        ef_rows = {row.metric: med.get((scenario, "enginefarm", row.metric)) for row in rows
                   if row.system == "enginefarm"}
        for row in rows:
            u = UNITS_E.get(row.metric, unit)
            vals = values.get((scenario, row.system, row.metric), [])
            m = med.get((scenario, row.system, row.metric))
            failed = [r for r in runs if r.scenario == scenario and r.system == SYSTEM_OF.get(row.system, row.system)
                      and not r.ok]
            if m is None:
                spread = "FAILED" if failed else "not run"
                lines.append(f"  {row.label:42} {'-':>10} {spread:>21} {0:>3}")
                if row.target:
                    verdicts.append(f"({scenario}) {row.goal:<26} {row.target:<12} {'no result':<20} MISS")
                continue
            spread = f"{fmt(min(vals), u)}–{fmt(max(vals), u)}"
            ratio_text, verdict_input = "", m
            if row.system != "enginefarm":
                if scenario == "b":
                    pct = row.metric.split("_")[0]
                    lb, dv = ef_rows.get(f"{pct}_lb"), ef_rows.get(f"{pct}_direct")
                    ratios = {"lb": lb / m if lb else float("nan"), "dv": dv / m if dv else float("nan")}
                    ratio_text = f"lb {ratios['lb']:.2f} dv {ratios['dv']:.2f}"
                    verdict_input = ratios
                else:
                    ef = next(iter(ef_rows.values()), None)
                    ratio = ef / m if ef else float("nan")
                    ratio_text = f"{ratio:.2f}x"
                    verdict_input = ratio
            status = ""
            if row.target:
                try:
                    passed = bool(row.check(verdict_input))
                except Exception:
                    passed = False
                status = f"{row.target} {'PASS' if passed else 'MISS'}"
                shown = ratio_text or f"{fmt(m, u)} {u}"
                verdicts.append(f"({scenario}) {row.goal:<26} {row.target:<12} "
                                f"{shown:<20} {'PASS' if passed else 'MISS'}")
            lines.append(f"  {row.label:42} {fmt(m, u):>10} {spread:>21} {len(vals):>3} {ratio_text:>17}  {status}")
    lines += ["", "targets:"] + [f"  {v}" for v in verdicts]
    failed = [r for r in runs if not r.ok]
    if failed:
        lines += ["", "failed runs:"]
        lines += [f"  ({r.scenario}) rep {r.rep} {r.system}: {r.error}  [log: {r.log}]" for r in failed]
    return "\n".join(lines), verdicts


# result "system" names -> the module that produced them (floor prints two kinds)
SYSTEM_OF = {"pika+redis": "floor", "pika-rpc": "floor"}


# --- leftovers -------------------------------------------------------------------------------
def sweep(prefix: str) -> list[str]:
    """Remove anything of this run still on the servers (after a killed subprocess); report it."""
    found: list[str] = []
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            found.append(f"{len(keys)} Redis key(s)")
            for i in range(0, len(keys), 1000):
                client.unlink(*keys[i : i + 1000])
        client.close()
    except Exception as exc:
        found.append(f"Redis sweep failed: {exc}")
    ctl = shutil.which("rabbitmqctl")
    if ctl:
        try:
            listing = subprocess.run([ctl, "list_queues", "-q", "--no-table-headers", "name"], capture_output=True,
                                     text=True, timeout=60).stdout.split()
            queues = [q for q in listing if q.startswith(prefix)]
            listing = subprocess.run([ctl, "list_exchanges", "-q", "--no-table-headers", "name"],
                                     capture_output=True, text=True, timeout=60).stdout.split()
            exchanges = [e for e in listing if e.startswith(prefix)]
            if queues or exchanges:
                import pika

                found.append(f"{len(queues)} queue(s), {len(exchanges)} exchange(s): {queues + exchanges}")
                conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
                for q in queues:
                    conn.channel().queue_delete(q)
                for e in exchanges:
                    conn.channel().exchange_delete(e)
                conn.close()
        except Exception as exc:
            found.append(f"RabbitMQ sweep failed: {exc}")
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 repetition and smaller counts, for development")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--scenarios", default="abcde")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--ef-python", default=os.path.join(REPO, ".venv", "bin", "python"))
    p.add_argument("--peers-python", default=os.path.join(HERE, ".venv-peers", "bin", "python"))
    p.add_argument("--out", default=None, help="directory for results.jsonl, logs and table.txt")
    p.add_argument("--time-limit", type=int, default=None, help="seconds one measurement may take")
    args = p.parse_args()

    counts = dict(QUICK if args.quick else FULL)
    reps = args.reps or counts["reps"]
    if args.time_limit:
        counts["timeout_s"] = args.time_limit
    run_id = secrets.token_hex(3)
    prefix = f"bench_{run_id}_"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or os.path.join(os.environ.get("TMPDIR", "/tmp"), f"enginefarm-bench-{stamp}-{run_id}")
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    pythons = {"ef": args.ef_python, "peers": args.peers_python}
    for kind, python in pythons.items():
        if not os.access(python, os.X_OK):
            sys.exit(f"no python for {kind} at {python} (run ops/bench/run.sh, which creates it)")

    key_file = os.path.join(out, "cluster.key")
    subprocess.run([os.path.join(os.path.dirname(args.ef_python), "enginefarm"), "keygen", key_file], check=True,
                   stdout=subprocess.DEVNULL)
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": HERE + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
        "ENGINEFARM_KEY_FILE": key_file,
        "ENGINEFARM_AMQP_URL": AMQP_URL, "ENGINEFARM_REDIS_URL": REDIS_URL,
        "BENCH_AMQP_URL": AMQP_URL, "BENCH_REDIS_URL": REDIS_URL,
        "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
    })
    env.pop("ENGINEFARM_CLUSTER", None)

    systems = [s for s in args.systems.split(",") if s]
    plan: list[tuple[str, int, str]] = []
    for scenario in args.scenarios:
        members = [s for s in systems if scenario in SYSTEMS[s][2]]
        for rep in range(1, reps + 1):
            shift = (rep - 1) % max(len(members), 1)
            for system in members[shift:] + members[:shift]:
                plan.append((scenario, rep, system))

    say(f"run {run_id}: {len(plan)} measurements, results in {out}")
    started = time.monotonic()
    runs: list[Run] = []
    with open(os.path.join(out, "results.jsonl"), "w") as raw:
        for i, (scenario, rep, system) in enumerate(plan, 1):
            module, kind, _ = SYSTEMS[system]
            run = Run(scenario, system, rep, f"{prefix}{SHORT[system]}_{scenario}{rep}")
            run_one(run, pythons[kind], module, counts, env, out)
            runs.append(run)
            for r in run.results:
                raw.write(json.dumps({**r, "rep": rep}) + "\n")
            raw.flush()
            shown = ", ".join(f"{r['system']} {r['metric']}={fmt(r['value'], r['unit'])} {r['unit']}"
                              for r in run.results)
            say(f"[{i}/{len(plan)} {time.monotonic() - started:5.0f}s] ({scenario}) rep {rep} {system:<11} "
                f"{run.seconds:5.1f}s  " + (shown if run.ok else f"FAILED: {run.error}"))

    leftovers = sweep(prefix)
    table, _ = render(runs, counts, reps, args.quick)
    table += f"\n\nwall time {time.monotonic() - started:.0f}s; raw results and logs: {out}"
    if leftovers:
        table += "\nleft behind by a failed run and removed now: " + "; ".join(leftovers)
    with open(os.path.join(out, "table.txt"), "w") as handle:
        handle.write(table + "\n")
    print(table)
    sys.exit(1 if any(not r.ok for r in runs) else 0)


if __name__ == "__main__":
    main()
