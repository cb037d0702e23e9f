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
    "Dependency": "enginefarm.client.dependency",
    "LoadBalancedView": "enginefarm.client.lbview",
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
    "TaskTimeout": "enginefarm.errors",
    "TaskAborted": "enginefarm.errors",
    "InvalidDependency": "enginefarm.errors",
    "ImpossibleDependency": "enginefarm.errors",
    "EngineError": "enginefarm.errors",
    "UnmetDependency": "enginefarm.errors",
    "Reference": "enginefarm.reference",
    "interactive": "enginefarm.reference",
    "depend": "enginefarm.dependency",
    "dependent": "enginefarm.dependency",
    "require": "enginefarm.dependency",
    "remote": "enginefarm.client.remotefunction",
    "parallel": "enginefarm.client.remotefunction",
    "RemoteFunction": "enginefarm.client.remotefunction",
    "ParallelFunction": "enginefarm.client.remotefunction",
}

# Modules under the names ipyparallel users import (``from enginefarm import error``).
_MODULES = {"error": "enginefarm.errors"}

__all__ = sorted([*_EXPORTS, *_MODULES])


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'enginefarm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, *_MODULES])


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext enginefarm``: the %px magics in IPython and Jupyter (``enginefarm.ipython``)."""
    from .ipython import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .ipython import unload_ipython_extension as unload

    unload(ipython)
