"""q35local: run Qwen 3.5 on your own machine."""

from q35local.base import VERSION as __version__

__all__ = ["__version__"]
