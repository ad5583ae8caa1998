"""Use a fast BLAS for MLX on Linux CPUs.

The `mlx[cpu]` wheel links the reference BLAS (fp32 GEMM ~8 GFLOP/s on a 2-core x86 machine);
OpenBLAS does the same GEMM more than ten times faster. Loading OpenBLAS with RTLD_GLOBAL
before MLX is imported makes MLX's BLAS calls resolve to it, as LD_PRELOAD would, without
restarting the process. `make install` installs Debian's libopenblas0-pthread where it can.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "MLXDEPLOY_BLAS"  # auto (default), openblas, reference, or a path to a BLAS library
CANDIDATES = (
    "/usr/lib/{arch}-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/{arch}-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib/{arch}-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/local/lib/libopenblas.so.0",
)


@dataclass(frozen=True)
class BlasChoice:
    name: str  # "openblas", "reference", "accelerate" or "not used"
    path: str | None = None
    note: str = ""

    def describe(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"BLAS: {self.name}{where}{'; ' + self.note if self.note else ''}"


def find_openblas() -> str | None:
    arch = platform.machine()
    for pattern in CANDIDATES:
        for path in glob.glob(pattern.format(arch=arch)):
            return path
    found = ctypes.util.find_library("openblas")
    return found


def load_fast_blas(setting: str | None = None) -> BlasChoice:
    """Load OpenBLAS ahead of MLX when MLX would run on a Linux CPU with the reference BLAS."""
    setting = (setting or os.environ.get(ENV_VAR) or "auto").strip()
    if sys.platform == "darwin":
        return BlasChoice("accelerate", note="MLX on macOS uses Apple's Accelerate")
    if setting == "reference":
        return BlasChoice("reference", note=f"{ENV_VAR}=reference")
    if "mlx.core" in sys.modules:
        return BlasChoice("unchanged", note="MLX was imported before the BLAS could be chosen")
    path = setting if setting not in ("auto", "openblas") else find_openblas()
    if path is None:
        note = "OpenBLAS not found; install libopenblas0-pthread for ~10x faster CPU matmuls"
        return BlasChoice("reference", note=note)
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        return BlasChoice("reference", note=f"could not load {path}: {exc}")
    return BlasChoice("openblas" if "openblas" in Path(path).name else "custom", path)
