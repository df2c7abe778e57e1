"""What a model needs: its profile from a GGUF or a checkpoint, and the official models' tables."""
