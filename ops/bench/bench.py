"""The benchmark driver: runs every system's scenarios in subprocesses and prints one table.

    python ops/bench/bench.py [--quick] [--reps N] [--scenarios "aa'bcdefg"] [--systems enginefarm,ray,...]

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
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from table import LABEL, fmt, render

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
REDIS_URL = "redis://127.0.0.1:6379/0"

# module, which python ("ef" or "peers"), scenarios it takes part in ("a1" is (a'))
SYSTEMS = {
    "enginefarm": ("sys_enginefarm.py", "ef", "a a1 b c d e f g"),
    "celery": ("sys_celery.py", "peers", "a b c d"),
    "dramatiq": ("sys_dramatiq.py", "peers", "a a1 b c d"),
    "ipyparallel": ("sys_ipyparallel.py", "peers", "a a1 b c d f g"),
    "ray": ("sys_ray.py", "peers", "a1 b c d f g"),
    "dask": ("sys_dask.py", "peers", "a1 b c d g"),
    "floor": ("sys_floor.py", "peers", "a b"),
}
SHORT = {"enginefarm": "ef", "celery": "cel", "dramatiq": "dra", "ipyparallel": "ipp", "ray": "ray", "dask": "dsk",
         "floor": "flr"}
ORDER = ("a", "a1", "b", "c", "d", "e", "f", "g")

FULL = {"tasks": 5000, "roundtrips": 300, "items": 100_000, "sizes": "16,256,1024", "elements": 10**7,
        "workers": 2, "reps": 3, "timeout_s": 300}
QUICK = {"tasks": 1000, "roundtrips": 100, "items": 20_000, "sizes": "16,64", "elements": 10**6,
         "workers": 2, "reps": 1, "timeout_s": 150}


def scenario_ids(text: str) -> list[str]:
    """ "aa'bc" or "a,a1,b": scenario ids in the order given; (a') is "a'" or "a1"."""
    found = [("a1" if t in ("a'", "a1") else t) for t in re.findall(r"a'|a1|[a-g]", text)]
    return [s for s in dict.fromkeys(found)]


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
            "--items", str(counts["items"]), "--sizes", str(counts["sizes"]), "--elements", str(counts["elements"]),
            "--workers", str(counts["workers"]), "--timeout", str(counts["timeout_s"] // 2)]
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


# --- leftovers -------------------------------------------------------------------------------
def sweep(prefix: str) -> list[str]:
    """Remove anything of this run still on the servers (after a killed subprocess); report it."""
    found: list[str] = []
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        # enginefarm's keys start with the cluster name in braces (its hash tag), the others' with the name.
        keys = [k for match in (prefix + "*", "{" + prefix + "*") for k in client.scan_iter(match=match, count=1000)]
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
    p.add_argument("--scenarios", default="aa'bcdefg", help="e.g. \"a'cf\" or a1,c,f")
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
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        sys.exit(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")
    for scenario in scenario_ids(args.scenarios):
        members = [s for s in systems if scenario in SYSTEMS[s][2].split()]
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
            run = Run(scenario, system, rep, f"{prefix}{SHORT[system]}_{scenario}r{rep}")
            run_one(run, pythons[kind], module, counts, env, out)
            runs.append(run)
            for r in run.results:
                raw.write(json.dumps({**r, "rep": rep}) + "\n")
            raw.flush()
            shown = ", ".join((f"{r['system']} {r['metric']}={fmt(r['value'], r['unit'])} {r['unit']}"
                              if r.get("value") is not None else f"{r['system']} {r['metric']} refused")
                              for r in run.results)
            say(f"[{i}/{len(plan)} {time.monotonic() - started:5.0f}s] ({LABEL.get(scenario, scenario)}) rep {rep} "
                f"{system:<11} "
                f"{run.seconds:5.1f}s  " + (shown if run.ok else f"FAILED: {run.error}"))

    leftovers = sweep(prefix)
    mode = "QUICK (1 repetition, smaller counts)" if args.quick else f"FULL ({reps} repetitions)"
    heading = (f"enginefarm benchmark — {mode}; medians over repetitions; {counts['workers']} workers per system; "
               f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
    table, _ = render([r for run in runs for r in run.results],
                      [(r.scenario, r.system, r.error) for r in runs if not r.ok], counts, heading)
    failed = [r for r in runs if not r.ok]
    if failed:
        table += "\n\nfailed runs:\n" + "\n".join(
            f"  ({LABEL.get(r.scenario, r.scenario)}) rep {r.rep} {r.system}: {r.error}  [log: {r.log}]"
            for r in failed)
    table += f"\n\nwall time {time.monotonic() - started:.0f}s; raw results and logs: {out}"
    if leftovers:
        table += "\nleft behind by a failed run and removed now: " + "; ".join(leftovers)
    with open(os.path.join(out, "table.txt"), "w") as handle:
        handle.write(table + "\n")
    print(table)
    sys.exit(1 if any(not r.ok for r in runs) else 0)


if __name__ == "__main__":
    main()
