"""enginefarm: IPython-style engines and task farming on RabbitMQ and Redis.

Names are imported on first use, so the engine's child process (which only runs user code)
does not load the broker and Redis clients.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AsyncResult": "enginefarm.client.asyncresult",
    "Client": "enginefarm.client.client",
    "DirectView": "enginefarm.client.view",
    "MapTask": "enginefarm.client.tasks",
    "StringTask": "enginefarm.client.tasks",
    "TaskResult": "enginefarm.client.tasks",
    "ResultNS": "enginefarm.client.tasks",
    "Settings": "enginefarm.config",
    "CompositeError": "enginefarm.errors",
    "EnginefarmError": "enginefarm.errors",
    "InvalidEngineID": "enginefarm.errors",
    "NoEnginesRegistered": "enginefarm.errors",
    "PayloadTooLarge": "enginefarm.errors",
    "RemoteError": "enginefarm.errors",
    "SerializationError": "enginefarm.errors",
    "SignatureError": "enginefarm.errors",
    "TimeoutError": "enginefarm.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'enginefarm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
