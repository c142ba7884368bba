"""trioraft runtime."""
