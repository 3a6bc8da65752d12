"""rbd's thin client: the `rbd` command line and the wire contract it shares with the daemon."""

__version__ = "0.1.0"
