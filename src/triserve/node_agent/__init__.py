"""triserve.node_agent."""
