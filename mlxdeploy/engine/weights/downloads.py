"""huggingface_hub's download progress, reported as one `Step` instead of its own tqdm bars.

`snapshot_download(tqdm_class=...)` makes every bar of a download from the class it is given:
one counting files ("Fetching N files") and, in huggingface_hub 1.x and later, one counting the
bytes written to disk, whose total grows as each file's size becomes known. The class below
draws none of them (a log file would fill with carriage returns); it forwards the bytes, or
the files where there is no bytes bar, to the step.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.utils import tqdm as hub_tqdm

from .progress import Step

BYTES_BAR = "huggingface_hub.snapshot_download"  # the `name` of the bytes-written bar
BYTES_DESCRIPTION = "Reconstructing"  # its description, where the name is not passed
FILES_DESCRIPTION = "Fetching"


def download_bars(step: Step) -> type[hub_tqdm]:
    """A tqdm class for `snapshot_download` whose bars feed `step`."""

    class Bars(hub_tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            description = str(kwargs.get("desc") or "")
            self._kind = _kind(kwargs.get("name"), description, kwargs.get("unit"))
            self._files = 0  # a disabled tqdm counts nothing itself
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            if self._kind == "bytes":
                step.set_total(0)

        def __setattr__(self, name: str, value: Any) -> None:
            super().__setattr__(name, value)
            if name == "total" and getattr(self, "_kind", None) == "bytes" and value:
                step.set_total(value)  # huggingface_hub grows the total as files start

        def update(self, n: float | None = 1) -> bool | None:
            if self._kind == "bytes" and n:
                step.advance(n)
            elif self._kind == "files" and n:
                self._files += int(n)
                step.phase(f"{self._files} of {self.total} files")
            return super().update(n)  # type: ignore[no-any-return]

    return Bars


def _kind(name: Any, description: str, unit: Any) -> str | None:
    if name == BYTES_BAR or (unit == "B" and description.startswith(BYTES_DESCRIPTION)):
        return "bytes"
    if description.startswith(FILES_DESCRIPTION):
        return "files"
    return None
