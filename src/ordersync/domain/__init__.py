"""The business core: pure Python, standard library only (no SQLAlchemy, FastAPI or HTTP)."""
