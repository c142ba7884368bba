"""trioraft storage."""
