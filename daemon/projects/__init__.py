"""Projects: what cargo says a project is, its rbd settings, a watched project's life, how its
builds are recorded, and the registry of watched projects."""
