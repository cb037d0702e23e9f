"""Progress bars, the way each place shows them: tqdm's auto bar is a widget in Jupyter and
a text bar on a terminal; with output going elsewhere (a file, a pipe, CI) it stays silent."""

from __future__ import annotations

import importlib.util
from typing import Any, TextIO

from tqdm import tqdm as text_bar


def _bar_class() -> type[text_bar[Any]]:
    if importlib.util.find_spec("ipywidgets") is None:
        # The notebook widget needs ipywidgets; without them tqdm.auto would warn in a
        # notebook, where the text bar works.
        return text_bar
    from tqdm.auto import tqdm as auto_bar

    return auto_bar


def progress_bar(total: int, unit: str = "tasks", file: TextIO | None = None,
                 disable: bool | None = None) -> text_bar[Any]:
    """A bar over ``total`` units; ``disable=None`` shows it only on a terminal or a notebook."""
    return _bar_class()(total=total, unit=unit, file=file, disable=disable, dynamic_ncols=True, leave=True)
