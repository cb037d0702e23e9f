"""Which signals a client may send to engines (``Client.send_signal``)."""

from __future__ import annotations

import signal


def signal_number(sig: object) -> int:
    """The number of ``sig``: a signal number (``signal.SIGINT``, 2) or name ('SIGINT').

    Raises:
        ValueError: ``sig`` is neither a signal this system knows nor the name of one.
    """
    if isinstance(sig, str):
        try:
            return int(signal.Signals[sig])
        except KeyError:
            raise ValueError(f"unknown signal name {sig!r} (a name is spelled like 'SIGINT')") from None
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise ValueError(f"a signal is a number or a name like 'SIGINT', not {sig!r}")
    if sig not in signal.valid_signals():
        raise ValueError(f"{sig} is not a signal number on this system")
    return int(sig)
