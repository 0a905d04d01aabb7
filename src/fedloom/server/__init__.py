"""Round orchestration on the server."""
