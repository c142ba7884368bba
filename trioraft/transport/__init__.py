"""trioraft transport."""
