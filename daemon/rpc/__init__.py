"""The socket API: connections, what each request does, and live events."""
