"""The conversion pipeline: Hugging Face Qwen 3.5 checkpoints to GGUF, one streaming pass."""
