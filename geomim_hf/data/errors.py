"""What a loader does with a sample whose files are broken: stop with an error that names the file and the sample, or,
where the user opted in, skip it with a logged warning and a count."""

from __future__ import annotations

import logging
from typing import Literal

logger = logging.getLogger("geomim_hf.data")

OnError = Literal["raise", "skip"]


class DataError(ValueError):
    """A sample cannot be read: a file is missing, truncated or malformed."""

    def __init__(self, sample: str, path: str, problem: str) -> None:
        super().__init__(f"sample {sample}: {path}: {problem}")
        self.sample, self.path, self.problem = sample, path, problem


class BadSampleCounter:
    """Counts skipped samples in this process (each DataLoader worker has its own count)."""

    def __init__(self, on_error: OnError) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.skipped = 0

    def handle(self, error: DataError) -> None:
        """Re-raise ``error``, or log it and count the sample as skipped."""
        if self.on_error == "raise":
            raise error
        self.skipped += 1
        logger.warning("skipping %s (%d skipped so far in this process)", error, self.skipped)


def check_file(sample: str, path, min_bytes: int = 1) -> int:
    """Size of the file at ``path``; a DataError if it is missing or shorter than ``min_bytes``."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(sample, str(path), "file not found") from None
    if size < min_bytes:
        raise DataError(sample, str(path), f"file has {size} bytes, expected at least {min_bytes}")
    return size


def check_jpeg(sample: str, path) -> None:
    """A JPEG that exists and ends with the end-of-image marker; cheap, so truncation is caught before decoding."""
    size = check_file(sample, path, min_bytes=4)
    with open(path, "rb") as handle:
        start = handle.read(2)
        handle.seek(size - 2)
        end = handle.read(2)
    if start != b"\xff\xd8":
        raise DataError(sample, str(path), "not a JPEG file")
    if end != b"\xff\xd9":
        raise DataError(sample, str(path), "truncated JPEG (no end-of-image marker)")
