"""What fault-suite tasks run on engines. Pickled by value, so engines never import the tests."""

from __future__ import annotations

import sys

import cloudpickle


def run(log_path: str, key: str, sleep_s: float = 0.0) -> str:
    """Append one line per execution, the key and the process that ran it (O_APPEND keeps
    concurrent lines whole), then sleep."""
    import os
    import time

    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    if sleep_s:
        time.sleep(sleep_s)
    return key


def host_address(peer: str, sleep_s: float = 0.0) -> str:
    """The address this process's host sends from towards ``peer`` (a test host's own address,
    tests/hosts.py); a UDP connect sends nothing."""
    import socket
    import time

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((peer, 9))
        address = str(sock.getsockname()[0])
    if sleep_s:
        time.sleep(sleep_s)
    return address


def always_raises(log_path: str, key: str) -> None:
    run(log_path, key)
    raise RuntimeError(f"poison task {key} always fails")


def kills_its_engine(log_path: str, key: str) -> None:
    import os

    run(log_path, key)
    os._exit(13)


def spin() -> None:
    while True:
        pass


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def unpicklable_result() -> object:
    import threading

    return threading.Lock()


def print_a_gigabyte() -> str:
    line = "x" * 1023
    for _ in range(1 << 20):
        print(line)
    return "printed"


def big_result(size: int) -> bytes:
    return b"r" * size


cloudpickle.register_pickle_by_value(sys.modules[__name__])
