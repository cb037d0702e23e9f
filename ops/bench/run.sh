#!/usr/bin/env bash
# The benchmark suite in one command: services and the enginefarm venv (ops/setup.sh), a separate
# venv for the peers (Celery, Dramatiq, ipyparallel, Ray, Dask), then every scenario; prints one table.
# Usage: ops/bench/run.sh [--quick] [any other bench.py option, e.g. --scenarios "a'bf"]
set -euo pipefail
cd "$(dirname "$0")/../.."

bash ops/setup.sh
# Scenarios (f) and (g) move numpy arrays: the engines need numpy (a test extra, not a dependency).
.venv/bin/python -m pip install -q --disable-pip-version-check numpy 2> >(grep -v "^WARNING: Location" >&2)

peers=ops/bench/.venv-peers
if [ ! -x "$peers/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$peers"
fi
# pip's notices about this machine's extra local indexes are noise here; real errors still fail the step.
"$peers/bin/python" -m pip install -q --disable-pip-version-check \
  "celery[redis]" "dramatiq[rabbitmq,redis]" ipyparallel pika redis ray "dask[bag]" distributed numpy \
  2> >(grep -v "^WARNING: Location" >&2)

exec .venv/bin/python ops/bench/bench.py "$@"
