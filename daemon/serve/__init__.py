"""Run mode: the developer's server, started after each successful build and replaced
only by a newer one (listen sockets, readiness, output, process hygiene)."""
