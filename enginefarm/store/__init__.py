"""Redis: the engine registry, task records, results and the history.

The only part of enginefarm that imports redis. Key names come from ``enginefarm.names``.
"""

from .connection import connect, translate_errors
from .history import History
from .output import LiveOutput, TaskOutput
from .records import Records, TaskRecord
from .registry import Registry
from .stores import Stores

__all__ = ["History", "LiveOutput", "Records", "Registry", "Stores", "TaskOutput", "TaskRecord", "connect",
           "translate_errors"]
