"""llama.cpp with a plan: loading, the engine, vision, llama.cpp's log, and the one path from a GGUF
to a running engine."""
