"""The HTTP API (FastAPI): `/v1` routes, problem+json errors, health and metrics."""
