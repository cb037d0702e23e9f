"""examples/parallel_basics.ipynb, executed headless by nbclient in a real Jupyter kernel against
a cluster started here (the kernel finds it through ENGINEFARM_*, as a user's would)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

from enginefarm.config import Settings
from enginefarm.local import settings_env

from ..harness import Cluster

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "parallel_basics.ipynb"


def text_of(cell: Any) -> str:
    """Everything a cell showed as text: streams, text/plain of displays and values, errors."""
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type == "error":
            parts.append("\n".join(output.traceback))
        else:
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def cell_starting(nb: Any, source: str) -> Any:
    return next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(source))


def test_the_example_notebook_runs_against_a_cluster(cluster: Cluster, settings: Settings, tmp_path: Path):
    # Given two engines, and a kernel whose environment names their cluster and key
    engines = cluster.start_engines(2)
    env = settings_env(settings)
    env.update(IPYTHONDIR=str(tmp_path / "ipython"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # When nbclient runs it (a cell that raises and is not tagged raises-exception fails this)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute(env=env)
    # Then each cell showed what the notebook promises
    ids = [d.engine_id for d in engines]
    assert text_of(cell_starting(nb, "from enginefarm import Client")) == str(ids)
    pids = re.findall(r"Out\[(\d+):\d+\]: (\d+)", text_of(cell_starting(nb, "%px import os")))
    assert [int(e) for e, _ in pids] == ids and len({p for _, p in pids}) == 2
    printed = text_of(cell_starting(nb, "%%px\nimport socket"))
    assert [int(e) for e in re.findall(r"\[stdout:(\d+)\] engine process \d+ on ", printed)] == ids
    rich = cell_starting(nb, "%%px --targets 0").outputs
    assert any(o.get("data", {}).get("text/html", "").endswith("<b>rich output from engine 0</b>") for o in rich)
    failed = cell_starting(nb, "%px 1 / 0").outputs
    assert [o.ename for o in failed if o.output_type == "error"] == ["CompositeError"]
    shown = text_of(cell_starting(nb, "%px 1 / 0"))
    assert "[engine 0]:" in shown and "ZeroDivisionError" in shown and "magics.py" not in shown
    assert text_of(cell_starting(nb, 'view.push({"a": 10})')) == "[20, 20]"
    assert text_of(cell_starting(nb, "view.map_sync")) == "[0, 1, 4, 9, 16, 25, 36, 49]"
    assert text_of(cell_starting(nb, "ar = view.apply_async")) == "[1024, 1024]"
    assert text_of(cell_starting(nb, "import asyncio")) == "[1, 3, 9, 27, 81]"
    streamed = text_of(cell_starting(nb, "%%px --stream"))
    for engine_id in ids:
        assert re.findall(rf"\[stdout:{engine_id}\] (step \d)", streamed) == ["step 0", "step 1", "step 2"]
    assert text_of(cell_starting(nb, "sum(lview.imap")) == str(sum(abs(i - 50_000) for i in range(100_000)))
    bar = cell_starting(nb, "squares = lview.map_async")
    assert text_of(bar).endswith(str(sum(n * n for n in range(200))))
    # The progress bar is a notebook widget there, not text
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in bar.outputs)
    assert os.path.isdir(tmp_path / "ipython")  # the kernel kept its IPython files here
