"""A real IPython shell in the test process, for driving the %px magics as a user types them."""

from __future__ import annotations

import atexit
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from enginefarm.ipython.magics import ParallelMagics


@contextmanager
def ipython_shell(ipython_dir: Path) -> Iterator[InteractiveShell]:
    """IPython's shell instance (what ``get_ipython()`` finds), undone afterwards: the singleton,
    the ``__main__`` it installs and its exit hook; its history stays in memory."""
    import os

    saved_dir, saved_main = os.environ.get("IPYTHONDIR"), sys.modules["__main__"]
    os.environ["IPYTHONDIR"] = str(ipython_dir)
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    try:
        yield shell
    finally:
        magics = getattr(shell.find_line_magic("px"), "__self__", None)
        if isinstance(magics, ParallelMagics):
            magics.close()
        atexit.unregister(shell.atexit_operations)
        InteractiveShell.clear_instance()
        sys.modules["__main__"] = saved_main
        if saved_dir is None:
            os.environ.pop("IPYTHONDIR", None)
        else:
            os.environ["IPYTHONDIR"] = saved_dir


def magics_of(shell: InteractiveShell, suffix: str = "") -> ParallelMagics:
    magics = getattr(shell.find_line_magic("px" + suffix), "__self__", None)
    assert isinstance(magics, ParallelMagics)
    return magics
