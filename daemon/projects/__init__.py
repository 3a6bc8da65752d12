"""Projects: what cargo says a project is, its rbd settings, and a watched project's life."""
