#!/usr/bin/env bash
# Set up, then run the test suite against the real RabbitMQ and Redis.
# Extra arguments go to pytest (e.g. ops/test.sh -m faults).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh --test
exec .venv/bin/python -m pytest "$@"
