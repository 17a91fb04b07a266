"""ordersync: the order synchronization hub."""
