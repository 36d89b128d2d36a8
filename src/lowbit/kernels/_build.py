"""Compatibility alias: the build helper is lowbit.kernels.build."""
from lowbit.kernels.build import build_shared, cache_dir, compiler  # noqa: F401
