"""The GGUF header, read without touching tensor data: its metadata and tensor table. A file
format, not MLX: `validate` reads it (the split of a distributed model), and the engine's
GGUF conversion (engine/weights/gguf/) builds on it."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types -> struct format (scalars) or numpy dtype (arrays).
# fmt: off
SCALAR_FORMATS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
    12: "<d",
}
# fmt: on
STRING_TYPE, ARRAY_TYPE = 8, 9


class GGUFError(Exception):
    """A GGUF file that cannot be converted; the message names the file and the reason."""


@dataclass(frozen=True)
class GGUFHeader:
    metadata: dict[str, Any]
    tensors: dict[str, tuple[int, tuple[int, ...], int]]  # name -> (type, shape, offset)
    data_start: int


class _HeaderReader:
    """Sequential little-endian reads that fail cleanly past the end of the file."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle = handle
        self.size = size

    def read(self, count: int) -> bytes:
        if count > self.size - self.handle.tell():
            raise EOFError("truncated header")
        return self.handle.read(count)

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.read(self.scalar("<Q")).decode("utf-8", errors="replace")

    def value(self, value_type: int) -> Any:
        if value_type == STRING_TYPE:
            return self.string()
        if value_type == ARRAY_TYPE:
            return self.array(self.scalar("<I"), self.scalar("<Q"))
        if value_type not in SCALAR_FORMATS:
            raise ValueError(f"unknown metadata value type {value_type}")
        return self.scalar(SCALAR_FORMATS[value_type])

    def array(self, item_type: int, count: int) -> list[Any]:
        if item_type in SCALAR_FORMATS:
            dtype = np.dtype(SCALAR_FORMATS[item_type].replace("?", "b1"))
            return np.frombuffer(self.read(count * dtype.itemsize), dtype=dtype).tolist()
        return [self.value(item_type) for _ in range(count)]


def read_header(path: Path) -> GGUFHeader:
    """Metadata and tensor table of a GGUF file, without reading tensor data."""
    try:
        with open(path, "rb") as handle:
            reader = _HeaderReader(handle, os.fstat(handle.fileno()).st_size)
            return _read_header(reader)
    except (OSError, EOFError, ValueError, struct.error) as error:
        raise GGUFError(f"{path}: not a readable GGUF file ({error})") from None


def _read_header(reader: _HeaderReader) -> GGUFHeader:
    magic = reader.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"bad magic {magic!r}")
    version = reader.scalar("<I")
    if version not in GGUF_VERSIONS:
        raise ValueError(f"unsupported GGUF version {version}")
    n_tensors, n_kv = reader.scalar("<Q"), reader.scalar("<Q")
    metadata = {}
    for _ in range(n_kv):
        key = reader.string()
        metadata[key] = reader.value(reader.scalar("<I"))
    tensors = {}
    for _ in range(n_tensors):
        name = reader.string()
        dims = [reader.scalar("<Q") for _ in range(reader.scalar("<I"))]
        tensors[name] = (reader.scalar("<I"), tuple(reversed(dims)), reader.scalar("<Q"))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    data_start = -(-reader.handle.tell() // alignment) * alignment
    return GGUFHeader(metadata, tensors, data_start)
