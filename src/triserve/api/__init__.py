"""triserve.api."""
