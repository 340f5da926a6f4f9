"""NEON C kernels and their cffi builder (not part of the installed runtime)."""
