#!/usr/bin/env bash
# Test hosts on this machine: network namespaces on a private bridge, each a "host" with its own
# address, for tests that spread a cluster over several hosts (tests/hosts.py drives this script).
#
#   ops/testhosts.sh up PREFIX COUNT           make hosts PREFIX-h1 .. PREFIX-hCOUNT on bridge PREFIX-br
#   ops/testhosts.sh down [PREFIX]             remove them, and what runs in them; every test
#                                              prefix (eft...) when none is given
#   ops/testhosts.sh cut PREFIX N              pull host N's cable: its port on the bridge goes down
#   ops/testhosts.sh restore PREFIX N          plug it back in
#   ops/testhosts.sh netem PREFIX N [delay 200ms] [loss 5%]
#                                              delay and drop what goes to host N (see below)
#   ops/testhosts.sh netem PREFIX N clear      take that off again
#   ops/testhosts.sh exec PREFIX N CMD [ARG...]   run a command on host N
#   ops/testhosts.sh list                      the test hosts that exist now
#
# PREFIX is "eft" and 1 to 5 lowercase letters or digits (eft3a9c): every name made starts with it,
# so parallel runs with their own prefixes never clash and `down` finds leftovers. The bridge gets
# 10.77.X.1/24 with X the first third octet no interface of this machine uses yet; host N is
# 10.77.X.(10+N). The hosts have no default route: they reach each other and the bridge's
# address, nothing else. `up` prints what it made, one line each:
#   bridge PREFIX-br 10.77.X.1
#   host N PREFIX-hN 10.77.X.(10+N) PREFIX-Nh        (namespace, address, its port on the bridge)
#
# netem: `tc qdisc ... root netem` on host N's port, where the kernel has sch_netem. Where it has
# not (CONFIG_NET_SCH_NETEM unset, as on some VM kernels), the same is done inside the host's
# namespace, on what it sends: loss with an iptables rule (`-m statistic --mode random`), delay
# by a small queue daemon (ops/nfdelay.py, NFQUEUE) that holds each packet before it lets it go. Either way
# one direction is affected, so a round trip grows by the delay once.
#
# Processes that tests start outside the namespaces (private servers on the bridge's address) may
# be registered in /run/enginefarm-testhosts/PREFIX/NAME.pid ("PID STARTTIME"): `down` stops
# them too, by PID, when the process with that PID is still the one that was registered.
set -euo pipefail

STATE=/run/enginefarm-testhosts
PREFIX_RE='eft[a-z0-9]{1,5}'
HERE="$(cd "$(dirname "$0")" && pwd)"

die() { echo "testhosts: $*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "must run as root (network namespaces, veths and bridges need CAP_NET_ADMIN)"
  command -v ip >/dev/null || { apt-get install -y -q iproute2 >/dev/null || die "ip (iproute2) is missing"; }
}

check_prefix() {
  [[ "$1" =~ ^${PREFIX_RE}$ ]] || die "prefix '$1' is not eft followed by 1-5 lowercase letters or digits"
}

check_host() {
  [[ "$2" =~ ^[0-9]{1,2}$ ]] || die "host number '$2' is not 1-99"
  ip netns list | awk '{print $1}' | grep -qx "$1-h$2" || die "no host $1-h$2"
}

# --- up --------------------------------------------------------------------------------------
free_octet() {
  local x used
  used="$(ip -o -4 addr show | awk '{print $4}')"
  for x in $(seq 0 255); do
    if ! grep -q "^10\.77\.${x}\." <<<"$used"; then echo "$x"; return; fi
  done
  die "no free 10.77.X.0/24 left"
}

up() {
  local prefix=$1 count=$2 x n ns veth
  check_prefix "$prefix"
  [[ "$count" =~ ^[0-9]{1,2}$ ]] && [ "$count" -ge 1 ] || die "count '$count' is not 1-99"
  ! ip link show "$prefix-br" >/dev/null 2>&1 || die "prefix $prefix is in use (bridge $prefix-br exists)"
  mkdir -p /run/lock "$STATE/$prefix"
  # One `up` at a time picks and takes its subnet.
  exec 9>/run/lock/enginefarm-testhosts.lock
  flock 9
  trap 'remove "$prefix" >/dev/null 2>&1 || true' ERR
  x=$(free_octet)
  ip link add "$prefix-br" type bridge
  ip addr add "10.77.$x.1/24" dev "$prefix-br"
  ip link set "$prefix-br" up
  flock -u 9
  echo "bridge $prefix-br 10.77.$x.1"
  for n in $(seq 1 "$count"); do
    ns="$prefix-h$n"; veth="$prefix-${n}h"
    ip netns add "$ns"
    ip link add "$veth" type veth peer name "$prefix-${n}n"
    ip link set "$veth" master "$prefix-br" up
    ip link set "$prefix-${n}n" netns "$ns"
    ip -n "$ns" link set "$prefix-${n}n" name eth0
    ip -n "$ns" addr add "10.77.$x.$((10 + n))/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    echo "host $n $ns 10.77.$x.$((10 + n)) $veth"
  done
  trap - ERR
}

# --- down ------------------------------------------------------------------------------------
starttime() { awk '{sub(/.*\) /, ""); print $20}' "/proc/$1/stat" 2>/dev/null || true; }

stop_pids() {  # SIGTERM, up to 15 s for them to go, then SIGKILL
  local pid left i
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for i in $(seq 1 150); do
    left=()
    for pid in "$@"; do [ -e "/proc/$pid" ] && left+=("$pid"); done
    [ ${#left[@]} -eq 0 ] && return 0
    sleep 0.1
  done
  kill -KILL "${left[@]}" 2>/dev/null || true
}

remove() {  # PREFIX regex (anchored by the callers' patterns)
  local pattern=$1 ns link file pid start pids
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^(${pattern})-h[0-9]+$" || true); do
    mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null || true)
    stop_pids "${pids[@]}"
    ip netns del "$ns"
  done
  for link in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 \
                | grep -E "^(${pattern})-(br|[0-9]+h|[0-9]+n)$" || true); do
    ip link del "$link" 2>/dev/null || true  # a veth goes with its peer
  done
  for dir in $(ls -d "$STATE"/* 2>/dev/null | grep -E "/(${pattern})$" || true); do
    pids=()
    for file in "$dir"/*.pid; do
      [ -e "$file" ] || continue
      read -r pid start <"$file" || true
      if [ -n "${pid:-}" ] && [ "$(starttime "$pid")" = "${start:-}" ]; then pids+=("$pid"); fi
    done
    stop_pids "${pids[@]}"
    rm -rf "$dir"
  done
}

down() {
  if [ $# -gt 0 ]; then check_prefix "$1"; remove "$1"; else remove "$PREFIX_RE"; fi
}

# --- faults ----------------------------------------------------------------------------------
link_state() {  # PREFIX N up|down
  check_prefix "$1"; check_host "$1" "$2"
  ip link set "$1-${2}h" "$3"
}

netem() {  # PREFIX N clear | [delay D] [loss P%]
  local prefix=$1 n=$2 ns veth delay="" loss="" err ipt
  check_prefix "$prefix"; check_host "$prefix" "$n"
  shift 2
  ns="$prefix-h$n"; veth="$prefix-${n}h"
  if [ "${1:-}" = clear ]; then
    tc qdisc del dev "$veth" root 2>/dev/null || true
    # Inside a test host only our rules live in OUTPUT.
    for ipt in iptables-legacy iptables; do
      if command -v "$ipt" >/dev/null; then ip netns exec "$ns" "$ipt" -F OUTPUT 2>/dev/null || true; fi
    done
    stop_pids $(cat "$STATE/$prefix/nfdelay-h$n.pid" 2>/dev/null | awk '{print $1}')
    rm -f "$STATE/$prefix/nfdelay-h$n.pid"
    return
  fi
  while [ $# -gt 0 ]; do
    case "$1" in
      delay) [[ "${2:-}" =~ ^[0-9]+ms$ ]] || die "delay is N ms, as in 'delay 200ms'"; delay=$2; shift 2 ;;
      loss) [[ "${2:-}" =~ ^[0-9]+(\.[0-9]+)?%$ ]] || die "loss is a percentage, as in 'loss 5%'"; loss=$2; shift 2 ;;
      *) die "netem takes 'delay Nms', 'loss P%' or 'clear', not '$1'" ;;
    esac
  done
  [ -n "$delay$loss" ] || die "netem needs 'delay Nms', 'loss P%' or 'clear'"
  netem "$prefix" "$n" clear
  if err=$(tc qdisc add dev "$veth" root netem ${delay:+delay $delay} ${loss:+loss $loss} 2>&1); then
    echo "netem on $veth: ${delay:+delay $delay }${loss:+loss $loss}"
    return
  fi
  grep -qi "unknown" <<<"$err" || die "tc netem on $veth failed: $err"
  netem_without_sch_netem "$prefix" "$n" "$delay" "$loss"
}

iptables_cmd() {  # the legacy backend where there is one: it needs no nftables expressions
  if command -v iptables-legacy >/dev/null; then echo iptables-legacy; elif command -v iptables >/dev/null; then
    echo iptables; else apt-get install -y -q iptables >/dev/null && echo iptables-legacy; fi
}

netem_without_sch_netem() {  # PREFIX N DELAY LOSS: the same inside host N, on what it sends
  local prefix=$1 n=$2 delay=$3 loss=$4 ns="$1-h$2" ipt pid
  ipt=$(iptables_cmd) || die "the kernel has no sch_netem and iptables cannot be installed"
  if [ -n "$loss" ]; then
    ip netns exec "$ns" "$ipt" -A OUTPUT -o eth0 -m statistic --mode random \
      --probability "$(awk -v p="${loss%\%}" 'BEGIN { printf "%.4f", p / 100 }')" -j DROP
  fi
  if [ -n "$delay" ]; then
    # --queue-bypass: if the queue daemon is gone, packets pass undelayed rather than vanish.
    ip netns exec "$ns" python3 "$HERE/nfdelay.py" 0 "${delay%ms}" </dev/null >"$STATE/$prefix/nfdelay-h$n.log" 2>&1 &
    pid=$!
    echo "$pid $(starttime "$pid")" >"$STATE/$prefix/nfdelay-h$n.pid"
    for _ in $(seq 1 100); do  # it prints "ready" once it holds the queue
      grep -q ready "$STATE/$prefix/nfdelay-h$n.log" 2>/dev/null && break
      [ -e "/proc/$pid" ] || die "nfdelay failed: $(cat "$STATE/$prefix/nfdelay-h$n.log")"
      sleep 0.1
    done
    grep -q ready "$STATE/$prefix/nfdelay-h$n.log" || die "nfdelay did not get ready"
    ip netns exec "$ns" "$ipt" -A OUTPUT -o eth0 -j NFQUEUE --queue-num 0 --queue-bypass
  fi
  echo "netem in $ns (no sch_netem in this kernel: $ipt${delay:+ and nfdelay}): ${delay:+delay $delay }${loss:+loss $loss}"
}

list() {
  ip netns list | awk '{print $1}' | grep -E "^${PREFIX_RE}-h[0-9]+$" || true
  ip -o -4 addr show | awk '{print $2, $4}' | grep -E "^${PREFIX_RE}-br " || true
}

main() {
  local cmd=${1:-}
  [ -n "$cmd" ] || { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
  shift
  need_root
  case "$cmd" in
    up) [ $# -eq 2 ] || die "usage: up PREFIX COUNT"; up "$@" ;;
    down) [ $# -le 1 ] || die "usage: down [PREFIX]"; down "$@" ;;
    cut) [ $# -eq 2 ] || die "usage: cut PREFIX N"; link_state "$1" "$2" down ;;
    restore) [ $# -eq 2 ] || die "usage: restore PREFIX N"; link_state "$1" "$2" up ;;
    netem) [ $# -ge 3 ] || die "usage: netem PREFIX N [delay Nms] [loss P%] | clear"; netem "$@" ;;
    exec) [ $# -ge 3 ] || die "usage: exec PREFIX N CMD [ARG...]"; check_prefix "$1"; check_host "$1" "$2"
          ns="$1-h$2"; shift 2; exec ip netns exec "$ns" "$@" ;;
    list) list ;;
    *) die "unknown command '$cmd' (up, down, cut, restore, netem, exec, list)" ;;
  esac
}

main "$@"
