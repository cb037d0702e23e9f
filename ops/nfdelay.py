#!/usr/bin/env python3
"""Hold every packet of an NFQUEUE for a fixed delay, then let it go: `netem delay` for kernels
without sch_netem. ops/testhosts.sh runs it inside a test host's namespace, behind an nftables
rule ``queue num Q bypass``; it speaks netlink itself (standard library only).

Usage: nfdelay.py QUEUE DELAY_MS      (prints "ready" once it holds the queue; SIGTERM stops it)

Packets leave in the order they came, each DELAY_MS after it arrived. Only metadata is copied
to user space, never the packets' contents.
"""

from __future__ import annotations

import collections
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
QUEUE_MAXLEN = 65536


def attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def message(kind: int, queue: int, attrs: bytes, seq: int, flags: int = NLM_F_REQUEST) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, seq, 0) + body


def attrs_of(data: bytes) -> dict[int, bytes]:
    found, at = {}, 0
    while at + 4 <= len(data):
        size, kind = struct.unpack_from("=HH", data, at)
        if size < 4:
            break
        found[kind & 0x7FFF] = data[at + 4 : at + size]
        at += (size + 3) & ~3
    return found


def messages(data: bytes):
    at = 0
    while at + 16 <= len(data):
        size, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, at)
        if size < 16:
            break
        yield kind, seq, data[at + 16 : at + size]
        at += (size + 3) & ~3


def configure(sock: socket.socket, queue: int) -> None:
    """Bind the queue, copy metadata only, let it hold many packets; fail on any error."""
    requests = [
        attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_UNSPEC)),
        attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)),
        attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN)),
    ]
    for seq, request in enumerate(requests, 1):
        sock.send(message(NFQNL_MSG_CONFIG, queue, request, seq, NLM_F_REQUEST | NLM_F_ACK))
        while True:
            for kind, got_seq, body in messages(sock.recv(65536)):
                if kind == NLMSG_ERROR and got_seq == seq:
                    (errno,) = struct.unpack_from("=i", body)
                    if errno:
                        raise OSError(-errno, f"NFQUEUE config step {seq} refused")
                    break
            else:
                continue
            break


def run(queue: int, delay_s: float) -> None:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE (root)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    configure(sock, queue)
    print("ready", flush=True)
    held: collections.deque[tuple[float, int]] = collections.deque()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    seq = 100
    while not stop:
        wait_s = max(held[0][0] - time.monotonic(), 0.0) if held else 0.5
        try:
            readable, _, _ = select.select([sock], [], [], wait_s)
        except InterruptedError:
            continue
        if readable:
            try:
                data = sock.recv(1 << 20)
            except OSError as exc:  # ENOBUFS: the kernel dropped some notices; go on
                print(f"recv: {exc}", file=sys.stderr, flush=True)
                continue
            arrived = time.monotonic()
            for kind, _seq, body in messages(data):
                if kind & 0xFF == NFQNL_MSG_PACKET:
                    header = attrs_of(body[4:]).get(NFQA_PACKET_HDR)
                    if header is not None:
                        held.append((arrived + delay_s, struct.unpack_from("!I", header)[0]))
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, packet_id = held.popleft()
            seq += 1
            verdict = attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
            sock.send(message(NFQNL_MSG_VERDICT, queue, verdict, seq))
    # Let what is still held go now rather than leave it for the kernel to drop.
    for _, packet_id in held:
        seq += 1
        sock.send(message(NFQNL_MSG_VERDICT, queue, attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id)), seq))


if __name__ == "__main__":
    if len(sys.argv) != 3 or not sys.argv[1].isdigit() or not sys.argv[2].isdigit():
        sys.exit("usage: nfdelay.py QUEUE DELAY_MS")
    run(int(sys.argv[1]), int(sys.argv[2]) / 1000.0)
