"""The store: SQLite on disk, and the async front that keeps it off the event loop."""
