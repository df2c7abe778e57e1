"""q35local: run Qwen 3.5 on your own machine."""

__version__ = "0.1.0"
