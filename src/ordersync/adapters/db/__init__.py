"""Storage: one code path over SQLite (embedded default, WAL) and PostgreSQL."""
