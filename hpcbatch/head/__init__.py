"""The head daemon: HTTP API, ZeroMQ fleet endpoint, and the engine that applies scheduler decisions."""
