"""Model size by the paper's rule: 1 bit per binary weight + 4 bytes per full-precision parameter."""

from __future__ import annotations

import math

from torch import nn

from bso_lightning.nn.packed import binary_numel
from bso_lightning.nn.routing import split_parameters


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of a deployed model: binary weights packed at 1 bit, full-precision parameters at 32 bits.

    Buffers (BatchNorm running statistics) are not counted, as in the paper.
    """
    split = split_parameters(model)
    binary_bits = sum(binary_numel(p) for p in split.binary)
    return math.ceil(binary_bits / 8) + 4 * sum(p.numel() for p in split.full_precision)
