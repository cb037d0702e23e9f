#!/usr/bin/env bash
# Set up, type-check the package (mypy --strict, configured in pyproject.toml), then run the
# test suite against the real RabbitMQ and Redis.
# Extra arguments go to pytest (e.g. ops/test.sh -m faults); mypy takes none.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh --test
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest "$@"
