"""triserve.gpu."""
