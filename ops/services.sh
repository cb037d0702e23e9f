#!/usr/bin/env bash
# Make sure RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379) answer on loopback:
# start whichever is stopped, install whichever is missing (Debian packages, needs root).
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2 waited=0
  until port_open "$port"; do
    sleep 1; waited=$((waited + 1))
    if [ "$waited" -ge 90 ]; then echo "$name did not start on 127.0.0.1:$port" >&2; exit 1; fi
  done
}

apt_updated=0
install_pkg() {
  if [ "$(id -u)" != 0 ]; then echo "$1 is not installed; run as root or install it: apt-get install -y $1" >&2; exit 1; fi
  if [ "$apt_updated" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

if ! port_open 6379; then
  command -v redis-server >/dev/null || install_pkg redis-server
  echo "starting Redis" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_port 6379 Redis
fi

if ! port_open 5672; then
  command -v rabbitmq-server >/dev/null || install_pkg rabbitmq-server
  echo "starting RabbitMQ" >&2
  rabbitmq-server -detached
  wait_port 5672 RabbitMQ
fi
