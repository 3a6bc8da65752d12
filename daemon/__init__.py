"""rbd's background daemon: watches Cargo projects, rebuilds on save, records every build."""
