"""Alembic migrations, applied by `ordersync migrate` (and at start-up on the embedded default)."""
