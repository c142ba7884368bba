"""docstore: a replicated, append-only JSON document database."""
