"""triserve.operator."""
