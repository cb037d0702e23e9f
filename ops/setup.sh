#!/usr/bin/env bash
# Set up everything on a fresh machine: services, a virtualenv with enginefarm, a cluster key.
# Usage: ops/setup.sh [--test]   (--test also installs the test dependencies)
set -euo pipefail
cd "$(dirname "$0")/.."

bash ops/services.sh

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}"

# Wait until the broker accepts AMQP (the port opens before RabbitMQ is ready).
.venv/bin/python - <<'PY'
import sys, time
import pika
deadline = time.monotonic() + 90
while True:
    try:
        pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F")).close()
        break
    except Exception as exc:
        if time.monotonic() > deadline:
            sys.exit(f"RabbitMQ does not accept connections: {exc}")
        time.sleep(1)
PY
