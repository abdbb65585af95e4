"""triserve.sim."""
