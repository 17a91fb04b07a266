"""Carrier connectors: booking, subscription and signed tracking callbacks, one file per carrier
format (see `base.py` for the interface and the registry)."""
