"""`q35 serve`: an OpenAI-compatible HTTP server (protocol.py: the wire format; app.py: the HTTP side)."""
