"""What a machine has: hardware descriptions, the probe, ggml's devices, the CPU's features."""
