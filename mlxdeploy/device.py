"""How much memory the device offers models: mlx's word for it, else the machine's RAM.

Apart from `footprint.py` (file headers only), because asking mlx imports it: only `validate`
and the server ask, never the HTTP layer.
"""

from __future__ import annotations

from .footprint import machine_memory, runs_on_cpu

# What mlx reports as the memory models may use: the working set Metal recommends on Apple
# silicon, the GPU's memory on CUDA; a CPU reports neither.
DEVICE_MEMORY_KEYS = ("max_recommended_working_set_size", "memory_size", "total_memory")


def device_memory() -> int:
    """The memory the device offers models: mlx's word for it, else the machine's RAM."""
    if runs_on_cpu():
        return machine_memory()
    try:
        import mlx.core as mx

        info = mx.device_info()
    except Exception:  # no usable device: the machine's RAM is the bound
        return machine_memory()
    sizes = [int(info[key]) for key in DEVICE_MEMORY_KEYS if isinstance(info.get(key), int)]
    return sizes[0] if sizes else machine_memory()
