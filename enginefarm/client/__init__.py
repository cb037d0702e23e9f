"""The client side: Client, its views and AsyncResult."""

from .asyncresult import AsyncResult, Metadata
from .client import Client
from .view import DirectView

__all__ = ["AsyncResult", "Client", "DirectView", "Metadata"]
