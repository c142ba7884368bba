"""trioraft client."""
