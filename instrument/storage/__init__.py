"""Where the data rests: SQLite and PostgreSQL, written by the flusher and read by queries."""
