"""docstore storage."""
