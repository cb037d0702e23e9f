"""Splitting a sequence over engines and joining the parts again (scatter, gather, map).

The rule is ipyparallel's (``client/map.py``), so that code written for it moves the same
items to the same engines:

- ``'b'`` (block): contiguous parts; with ``n`` items on ``q`` engines, the first ``n % q``
  engines get ``n // q + 1`` items and the rest ``n // q``.
- ``'r'`` (round robin): engine ``p`` gets ``seq[p::q]``.

Joining is the inverse: numpy arrays are joined with numpy (so ``gather`` gives back an
array of the same dtype), other sequences become one list in the original order. numpy is
never imported here: an object can only be an ndarray if its caller already imported numpy.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from itertools import islice
from typing import Any

DISTS = ("b", "r")
# Sliceable, but each is one item to gather (as in ipyparallel): joining strings would turn
# a flattened list of names into one long name.
_ATOMS = (str, bytes, bytearray)


def check_dist(dist: str) -> None:
    """Raises: ValueError for a distribution other than 'b' or 'r'."""
    if dist not in DISTS:
        raise ValueError(f"dist must be 'b' (block) or 'r' (round robin), not {dist!r}")


def sized(seq: Any) -> Any:
    """``seq`` itself if it has a length, else its items as a list (a generator, an iterator).

    Raises:
        TypeError: ``seq`` is neither sized nor iterable.
    """
    try:
        len(seq)
    except TypeError:
        return list(seq)
    return seq


def block_bounds(length: int, index: int, count: int) -> tuple[int, int]:
    """The slice ``[low, high)`` of part ``index`` of ``count`` contiguous parts of ``length``
    items: the first ``length % count`` parts hold one item more."""
    if not 0 <= index < count:
        raise ValueError(f"part {index} of {count} does not exist")
    base, extra = divmod(length, count)
    low = index * base + min(index, extra)
    return low, low + base + (1 if index < extra else 0)


def part(seq: Any, index: int, count: int, dist: str = "b", length: int | None = None) -> Any:
    """Part ``index`` of ``count`` of a sized ``seq``, of the sequence's own type where it
    slices (a list slice is a list, an array slice an array, a range slice a range).

    ``length`` caps how many items of ``seq`` are split (map over sequences of unequal
    length takes as many items as the shortest has).
    """
    check_dist(dist)
    n = len(seq) if length is None else length
    if dist == "b":
        low, high = block_bounds(n, index, count)
        step = 1
    else:
        if not 0 <= index < count:
            raise ValueError(f"part {index} of {count} does not exist")
        low, high, step = index, n, count
    try:
        return seq[low:high:step] if step != 1 else seq[low:high]
    except TypeError:
        # Sized but not sliceable (a set, a dict's keys): take the items in iteration order.
        return list(islice(seq, low, high, step))


def split(seq: Any, count: int, dist: str = "b") -> list[Any]:
    """``seq`` as ``count`` parts (some empty when it has fewer than ``count`` items)."""
    if count < 1:
        raise ValueError("there must be at least one part")
    seq = sized(seq)
    return [part(seq, index, count, dist) for index in range(count)]


def flattened(piece: Any, flatten: bool) -> Any:
    """What scatter pushes for one part: with ``flatten``, a part of one item is that item."""
    if flatten and len(piece) == 1:
        return piece[0]
    return piece


def join(parts: Sequence[Any], dist: str = "b") -> Any:
    """The sequence whose ``split`` gave ``parts``: an ndarray when the parts are arrays,
    else a list. A part that is not a sequence (scatter's ``flatten`` pushed one item) counts
    as that one item; when no part is a sequence, the list of parts is the answer.

    A flattened item that is itself a list cannot be told from a part; gather what
    ``flatten=True`` scattered only when the items are not sequences.
    """
    check_dist(dist)
    if not parts:
        return []
    arrays = _as_arrays(parts, dist)
    if arrays is not None:
        return arrays
    if not any(_is_sequence(p) for p in parts):
        return list(parts)
    pieces = [list(p) if _is_sequence(p) else [p] for p in parts]
    if dist == "b":
        return [item for piece in pieces for item in piece]
    return interleave(pieces)


def interleave(pieces: Sequence[Sequence[Any]]) -> list[Any]:
    """Round-robin parts back in order: item ``i`` of part ``p`` was item ``i * q + p``."""
    out: list[Any] = []
    longest = max((len(p) for p in pieces), default=0)
    for i in range(longest):
        out.extend(piece[i] for piece in pieces if i < len(piece))
    return out


def is_array(obj: object) -> bool:
    """Is ``obj`` a numpy array? Never imports numpy: without it loaded there are none."""
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(obj, numpy.ndarray)


def _is_sequence(obj: Any) -> bool:
    if isinstance(obj, _ATOMS):
        return False
    if is_array(obj):
        return bool(obj.ndim >= 1)  # a 0-d array is one item
    return isinstance(obj, (Sequence, range))


def _as_arrays(parts: Sequence[Any], dist: str) -> Any:
    """The parts joined as one ndarray, or None when they are not arrays.

    A flattened part (one row, or a numpy scalar) is grown back to a part of one row. Parts
    that do not stack (different trailing shapes) are not arrays to join: None.
    """
    shaped = [p for p in parts if is_array(p) and p.ndim >= 1]
    if not shaped:
        return None
    numpy: Any = sys.modules["numpy"]  # loaded: a part is an ndarray
    top = max(p.ndim for p in shaped)
    blocks = []
    for piece in parts:
        block = numpy.asarray(piece)
        if block.ndim == top - 1:
            block = block[numpy.newaxis]
        if block.ndim != top:
            return None
        blocks.append(block)
    try:
        if dist == "b":
            return numpy.concatenate(blocks)
        # Round robin: part p holds items p, p + q, p + 2q, ...
        total = sum(len(b) for b in blocks)
        out = numpy.empty((total, *blocks[0].shape[1:]), dtype=numpy.result_type(*blocks))
        for index, block in enumerate(blocks):
            out[index::len(blocks)] = block
        return out
    except ValueError:
        return None
