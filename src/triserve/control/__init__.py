"""triserve.control."""
