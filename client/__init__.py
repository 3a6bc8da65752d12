"""rbd's thin client: the `rbd` command line, its connection to the daemon, and its output."""
