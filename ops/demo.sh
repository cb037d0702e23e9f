#!/usr/bin/env bash
# The main job: set up, then run a local cluster farming a short demo and print its results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
key=${ENGINEFARM_KEY_FILE:-${XDG_CONFIG_HOME:-$HOME/.config}/enginefarm/key}
[ -f "$key" ] || .venv/bin/enginefarm keygen "$key"
exec .venv/bin/enginefarm --log-level WARNING demo "$@"
