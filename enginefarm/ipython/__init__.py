"""enginefarm in IPython and Jupyter: ``%load_ext enginefarm`` or ``client.activate()``.

Either registers the %px magics (``magics.ParallelMagics``) in the running IPython shell:
``%load_ext`` on the engines of ``Client()`` (settings from ``ENGINEFARM_*``, as
``enginefarm cluster`` uses them), ``activate`` on the view it is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from .magics import ParallelMagics


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """``%load_ext enginefarm``: %px on every engine of ``Client()``, made on first use.

    Magics already activated on a view (``client.activate()``) are kept.
    """
    if _registered(ipython, "") is None:
        register(ipython, None, "")


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """``%unload_ext enginefarm``: leaves %autopx (the magics stay, as IPython's do)."""
    magics = _registered(ipython, "")
    if magics is not None:
        magics.close()


def activate(view: Any, suffix: str = "", shell: InteractiveShell | None = None) -> ParallelMagics:
    """Register %px{suffix}, %%px{suffix}, %autopx{suffix}, %pxresult{suffix} and
    %pxconfig{suffix} on ``view``, in ``shell`` (default: the running IPython).

    Raises:
        RuntimeError: no IPython shell is running.
    """
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            raise RuntimeError("activate() registers IPython magics: it needs a running IPython or Jupyter kernel")
    return register(shell, view, suffix)


def register(shell: InteractiveShell, view: Any, suffix: str) -> ParallelMagics:
    from .magics import ParallelMagics

    previous = _registered(shell, suffix)
    if previous is not None:
        previous.close()  # its %autopx must not outlive it
    magics = ParallelMagics(shell, view, suffix)
    shell.register_magics(magics)
    return magics


def _registered(shell: InteractiveShell, suffix: str) -> ParallelMagics | None:
    from .magics import ParallelMagics

    found = cast(Any, shell).find_line_magic("px" + suffix)  # not annotated in IPython
    owner = getattr(found, "__self__", None)
    return owner if isinstance(owner, ParallelMagics) else None
