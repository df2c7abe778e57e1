"""A conversation: chat templates, thinking, images, sampling, the store, and the session that the UI
and `q35 run` share."""
