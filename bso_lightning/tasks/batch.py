"""How a batch is presented over time steps (the layout is defined in ``datamodules/base.py``)."""

from __future__ import annotations

from torch import Tensor

SEQUENCE_NDIM = 5  # [B, T, C, H, W]


def check_time_steps(x: Tensor, time_steps: int) -> None:
    """Raise if a sequence batch ``[B, T, C, H, W]`` does not hold exactly ``time_steps`` frames."""
    if x.dim() == SEQUENCE_NDIM and x.shape[1] != time_steps:
        raise ValueError(
            f"the batch holds {x.shape[1]} frames per sample (shape {tuple(x.shape)}) but the model runs "
            f"time_steps={time_steps}; set the DataModule's frame count and the model's time_steps to the same T"
        )


def input_at_time_step(x: Tensor, t: int) -> Tensor:
    """The input current at step ``t``: frame ``t`` of a ``[B, T, C, H, W]`` batch, else ``x`` itself (static)."""
    return x[:, t] if x.dim() == SEQUENCE_NDIM else x
