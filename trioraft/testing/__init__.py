"""trioraft testing."""
