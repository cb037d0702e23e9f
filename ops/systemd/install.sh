#!/usr/bin/env bash
# Install enginefarm engines (and optionally the scheduler) as systemd services on this host.
# Usage: sudo ops/systemd/install.sh [ENGINES] [--scheduler]
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
engines=${1:-2}
prefix=/opt/enginefarm

id enginefarm >/dev/null 2>&1 || useradd --system --home /var/lib/enginefarm --shell /usr/sbin/nologin enginefarm
mkdir -p "$prefix" /etc/enginefarm
if [ "$here" != "$prefix" ]; then cp -a "$here/." "$prefix/"; fi
python3 -m venv "$prefix/.venv"
"$prefix/.venv/bin/pip" install -q "$prefix"
[ -f /etc/enginefarm/enginefarm.env ] || install -m 0640 -g enginefarm "$prefix/ops/systemd/enginefarm.env.example" /etc/enginefarm/enginefarm.env
if [ ! -f /etc/enginefarm/cluster.key ]; then
  "$prefix/.venv/bin/enginefarm" keygen /etc/enginefarm/cluster.key
fi
chown enginefarm:enginefarm /etc/enginefarm/cluster.key
chmod 0600 /etc/enginefarm/cluster.key
install -m 0644 "$prefix/ops/systemd/enginefarm-engine@.service" "$prefix/ops/systemd/enginefarm-scheduler.service" /etc/systemd/system/
systemctl daemon-reload
for i in $(seq 1 "$engines"); do systemctl enable --now "enginefarm-engine@$(printf %02d "$i")"; done
if [ "${2:-}" = "--scheduler" ]; then systemctl enable --now enginefarm-scheduler; fi
