"""docstore engine."""
