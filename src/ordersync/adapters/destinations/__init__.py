"""Outbound delivery to downstream systems."""
