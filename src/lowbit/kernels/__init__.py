"""Low-bit compute kernels."""
