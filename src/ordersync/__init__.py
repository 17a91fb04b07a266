"""ordersync: the order synchronization hub."""

__version__ = "0.1.0"
