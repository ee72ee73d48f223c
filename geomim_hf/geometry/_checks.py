"""Shape checks that turn a wrong input into an error naming the argument, instead of a broadcast gone wrong."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_shape(name: str, tensor: torch.Tensor, expected: Sequence[int | None], meaning: str) -> None:
    """Raise ``ValueError`` unless ``tensor.shape`` matches ``expected``, where ``None`` matches any size.

    ``meaning`` spells the expected shape with letters, e.g. ``"(B, N, 3, 3)"``, for the message.
    """
    shape = tuple(tensor.shape)
    if len(shape) != len(expected) or any(want is not None and got != want for got, want in zip(shape, expected)):
        wanted = tuple("*" if want is None else want for want in expected)
        raise ValueError(f"{name} must have shape {meaning} = {wanted}, got {shape}")
