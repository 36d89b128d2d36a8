"""Compatibility alias of lowbit.kernels.build."""
from lowbit.kernels.build import _cpu_key, build_shared, cache_dir, compiler  # noqa: F401
