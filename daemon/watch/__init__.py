"""Watching: which paths to watch, the watcher, and the scheduler that turns saves into builds."""
