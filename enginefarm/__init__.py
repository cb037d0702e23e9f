"""enginefarm: IPython-style engines and task farming on RabbitMQ and Redis."""

from .client import AsyncResult, Client, DirectView
from .client.tasks import MapTask, ResultNS, StringTask, TaskResult
from .config import Settings
from .errors import (
    CompositeError,
    EnginefarmError,
    InvalidEngineID,
    NoEnginesRegistered,
    RemoteError,
    SerializationError,
    SignatureError,
    TimeoutError,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncResult", "Client", "CompositeError", "DirectView", "EnginefarmError", "InvalidEngineID",
    "NoEnginesRegistered", "RemoteError", "SerializationError", "Settings", "SignatureError",
    "TimeoutError", "MapTask", "StringTask", "TaskResult", "ResultNS",
]
