"""triserve.bench."""
