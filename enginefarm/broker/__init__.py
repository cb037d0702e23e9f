"""RabbitMQ: connections, topology, confirmed publishing and acked consuming.

The only part of enginefarm that imports pika. It knows queues and bytes, not tasks.
"""

from .connection import BrokerConnection
from .consumer import Consumer, Delivery
from .publisher import Publisher

__all__ = ["BrokerConnection", "Consumer", "Delivery", "Publisher"]
