"""Progress bars, the way each place shows them: tqdm's auto bar is a widget in Jupyter and
a text bar on a terminal; with output going elsewhere (a file, a pipe, CI) it stays silent."""

from __future__ import annotations

from typing import Any, TextIO

from tqdm.auto import tqdm


def progress_bar(total: int, unit: str = "tasks", file: TextIO | None = None,
                 disable: bool | None = None) -> tqdm[Any]:
    """A bar over ``total`` units; ``disable=None`` shows it only on a terminal or a notebook."""
    return tqdm(total=total, unit=unit, file=file, disable=disable, dynamic_ncols=True, leave=True)
