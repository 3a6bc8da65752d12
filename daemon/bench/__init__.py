"""`rbd bench`: configurations measured side by side, on a copy of the project."""
