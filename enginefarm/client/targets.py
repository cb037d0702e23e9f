"""What a view made with ``client[key]`` or ``client.direct_view(key)`` targets.

ipyparallel's forms: an engine id, a negative index (``client[-1]``: the last live engine),
a slice (``client[:]``, ``client[::2]``, ``client[1:3]``), a list, tuple or range of ids, or
'all'. Indices and slices resolve against the sorted live ids once, when the view is made;
'all' stays 'all' and means the engines alive at each call.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..errors import InvalidEngineID, NoEnginesRegistered, TimeoutError

ViewKey = int | slice | list[int] | tuple[int, ...] | range | str
ViewTargets = int | list[int] | str


def view_targets(key: object, live: list[int], cluster: str) -> ViewTargets:
    """The view's targets: an engine id, a list of engine ids or 'all'.

    Raises:
        InvalidEngineID: an id not alive, an index out of range, a slice that selects no
            engine or is not made of ints, or a key of another type.
        NoEnginesRegistered: a slice while no engine is alive.
    """
    if isinstance(key, str):
        if key != "all":
            raise InvalidEngineID(f"the only target string is 'all', not {key!r}")
        return key
    if isinstance(key, slice):
        return _from_slice(key, live, cluster)
    if isinstance(key, bool):
        raise InvalidEngineID(f"engine ids are ints, not {key!r}")
    if isinstance(key, int):
        return _from_index(key, live, cluster)
    if isinstance(key, (list, tuple, range)):
        wanted = list(key)
        if not wanted:
            raise InvalidEngineID("targets is an empty list")
        for target in wanted:
            _check_live(target, live, cluster)
        return wanted
    raise InvalidEngineID(f"targets are an engine id, a slice, a list of ids or 'all', not {key!r}")


def _from_index(index: int, live: list[int], cluster: str) -> int:
    if index >= 0:
        _check_live(index, live, cluster)
        return index
    if -index > len(live):
        raise InvalidEngineID(f"index {index} is out of range: {len(live)} engines are alive in "
                              f"cluster {cluster!r} (ids: {live})")
    return live[index]


def _from_slice(key: slice, live: list[int], cluster: str) -> list[int]:
    for bound in (key.start, key.stop, key.step):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int)):
            raise InvalidEngineID(f"a slice of engines takes ints, not {bound!r}")
    if key.step == 0:
        raise InvalidEngineID("a slice of engines cannot have step 0")
    if not live:
        raise NoEnginesRegistered(f"no engines are registered in cluster {cluster!r}")
    chosen = live[key]
    if not chosen:
        raise InvalidEngineID(f"slice {_show(key)} selects none of the live engines {live}")
    return chosen


def _check_live(target: object, live: list[int], cluster: str) -> None:
    if isinstance(target, bool) or not isinstance(target, int):
        raise InvalidEngineID(f"engine ids are ints, not {target!r}")
    if target not in live:
        raise InvalidEngineID(f"engine {target} is not registered in cluster {cluster!r} (ids: {live})")


def _show(key: slice) -> str:
    parts = ["" if v is None else str(v) for v in (key.start, key.stop, key.step)]
    return ":".join(parts if key.step is not None else parts[:2])


def wait_for_count(alive: Callable[[], int], n: int | None, timeout_s: float | None, cluster: str) -> None:
    """Poll ``alive()`` until it reaches ``n`` (``Client.wait_for_engines``).

    Raises:
        TimeoutError: still fewer than ``n`` after ``timeout_s`` (None or negative: no limit).
        TypeError: ``n`` is None.
    """
    if n is None:
        raise TypeError("wait_for_engines needs n, the number of engines to wait for")
    deadline = None if timeout_s is None or timeout_s < 0 else time.monotonic() + timeout_s
    delay_s = 0.05
    while (count := alive()) < n:
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"{count} of {n} engines were alive in cluster {cluster!r} "
                               f"after waiting {timeout_s:g}s for them")
        left_s = delay_s if deadline is None else max(deadline - time.monotonic(), 0.0)
        time.sleep(min(delay_s, left_s))
        delay_s = min(delay_s * 2, 0.5)
