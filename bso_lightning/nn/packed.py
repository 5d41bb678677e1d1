"""Binary weights stored as bits (paper Table 1: weight storage O(d/32)).

A packed binary tensor is a :class:`PackedBinaryParameter`: a ``uint8`` parameter holding 8 weights per byte
(bit 1 = +1, bit 0 = −1; ``numpy.packbits`` order, most significant bit first, zero padding at the end),
with the weight's logical shape. It never requires grad: its layer computes the weight gradient G in its own
backward and hands it over with :meth:`PackedBinaryParameter.deliver_grad`, and BSO/T-BSO flip it by XOR.
The ±1 tensor exists only while one layer computes (:func:`unpack_signs`).

Kept as our own code because no library packs *trainable* binary weights for PyTorch (larq is Keras; bitsandbytes
packs quantised float weights, not sign bits flipped by an optimizer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PackedBinaryParameter", "pack_bits", "pack_signs", "unpack_signs", "is_packed", "binary_numel",
           "binary_shape", "binary_signs"]

_SIGN_TABLES: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def _sign_table(device: torch.device, dtype: torch.dtype) -> Tensor:
    """[256, 8] table: row b holds the 8 signs (±1) that byte b encodes, MSB first."""
    key = (device, dtype)
    table = _SIGN_TABLES.get(key)
    if table is None:
        bits = (torch.arange(256, dtype=torch.int32).unsqueeze(1) >> torch.arange(7, -1, -1)) & 1
        table = _SIGN_TABLES[key] = (bits * 2 - 1).to(device=device, dtype=dtype)
    return table


def packed_size(numel: int) -> int:
    """Bytes that hold ``numel`` binary weights."""
    return (numel + 7) // 8


#: One int64 of 8 bytes 0/1 (little-endian) times this gathers their low bits, first byte first, into its top byte.
_GATHER_BITS = sum(1 << (63 - 9 * k) for k in range(8)) - (1 << 64)


def pack_bits(mask: Tensor) -> Tensor:
    """Pack a bool or 0/1 ``uint8`` tensor (any shape) into ``uint8`` [ceil(n/8)], MSB first, zero padded
    (= ``numpy.packbits``): one multiply per 8 entries. The one bit packer (weights, flips, export)."""
    flat = mask.reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    elif flat.dtype != torch.uint8:
        raise ValueError(f"pack_bits takes a bool or 0/1 uint8 tensor, got dtype {flat.dtype}")
    pad = (-flat.numel()) % 8
    # whole int64 words at an aligned offset (a view's offset: a copy; compiled, the compiler places the buffers)
    if pad or (not torch.compiler.is_compiling() and flat.storage_offset() % 8):
        flat = torch.cat([flat, flat.new_zeros(pad)])
    words = flat.view(torch.int64)
    return (torch.bitwise_right_shift(words * _GATHER_BITS, 56) & 255).to(torch.uint8)


def pack_signs(weight: Tensor, name: str = "weight") -> Tensor:
    """The bits of a ±1 tensor (bit 1 for +1). Raises ``ValueError`` naming ``name`` if it holds anything else."""
    if not weight.is_floating_point():
        raise ValueError(f"{name}: a binary weight to pack must be a floating-point ±1 tensor, got dtype {weight.dtype}")
    bad = (weight != 1) & (weight != -1)
    if bool(bad.any()):
        example = weight[bad].flatten()[0].item()
        raise ValueError(f"{name} (shape {list(weight.shape)}) holds values other than ±1 (e.g. {example!r}); "
                         "only exactly ±1 tensors can be stored as bits")
    return pack_bits(weight > 0)


def unpack_signs(bits: Tensor, shape: torch.Size | tuple[int, ...], dtype: torch.dtype = torch.float32,
                 out: Tensor | None = None) -> Tensor:
    """The ±1 tensor of ``shape`` in ``dtype`` that ``bits`` encode (one table lookup per byte); written into ``out``
    (contiguous, ``dtype``, at least 8 entries per byte of ``bits``) if given. The inverse of :func:`pack_bits`."""
    numel = math.prod(shape)
    if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != packed_size(numel):
        raise ValueError(f"packed bits for shape {list(shape)} must be uint8 [{packed_size(numel)}], "
                         f"got {bits.dtype} {list(bits.shape)}")
    table = _sign_table(bits.device, dtype)
    if out is None:
        signs = table.index_select(0, bits.to(torch.int32)).view(-1)
    else:
        signs = torch.index_select(table, 0, bits.to(torch.int32), out=out[: 8 * bits.numel()].view(-1, 8)).view(-1)
    return signs[:numel].view(shape)


class PackedBinaryParameter(nn.Parameter):
    """A binary weight stored as bits: ``uint8`` data [ceil(n/8)], ``logical_shape`` the ±1 tensor's shape.

    Attributes:
        logical_shape: shape of the ±1 weight it encodes.
        packed_grad: the gradient G (float, ``logical_shape``) delivered by the layer's backward, or None.
    """

    logical_shape: torch.Size
    packed_grad: Tensor | None

    def __new__(cls, data: Tensor, logical_shape: torch.Size | tuple[int, ...] | None = None) -> "PackedBinaryParameter":
        if logical_shape is None:
            raise ValueError("PackedBinaryParameter needs the logical shape of the weight it encodes")
        shape = torch.Size(logical_shape)
        if data.dtype != torch.uint8 or data.dim() != 1 or data.numel() != packed_size(shape.numel()):
            raise ValueError(f"packed bits for shape {list(shape)} must be uint8 [{packed_size(shape.numel())}], "
                             f"got {data.dtype} {list(data.shape)}")
        param = super().__new__(cls, data, requires_grad=False)
        param.logical_shape = shape
        param.packed_grad = None
        param._grad_ready_hooks = []
        return param

    @classmethod
    def from_signs(cls, weight: Tensor, name: str = "weight") -> "PackedBinaryParameter":
        """Pack a ±1 tensor (raises ``ValueError`` naming ``name`` for any other value)."""
        return cls(pack_signs(weight.detach(), name), weight.shape)

    def signs(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The ±1 tensor (a new tensor in ``dtype``; drop it after use)."""
        return unpack_signs(self.data, self.logical_shape, dtype)

    def flip_(self, mask: Tensor) -> None:
        """Flip the weights where the bool ``mask`` (``logical_shape``) is set: one XOR per byte."""
        self.data.bitwise_xor_(pack_bits(mask))

    # -- gradient hand-over (autograd does not accumulate into a uint8 tensor) -----------
    def deliver_grad(self, grad: Tensor) -> None:
        """Accumulate G into ``packed_grad``, then run the hooks (e.g. BSO stepping this tensor at once)."""
        self.packed_grad = grad if self.packed_grad is None else self.packed_grad + grad
        for hook in list(self._grad_ready_hooks):
            hook(self)

    def register_grad_ready_hook(self, hook: Callable[["PackedBinaryParameter"], None]) -> Any:
        """Like ``Tensor.register_post_accumulate_grad_hook``; returns a handle with ``remove()``."""
        hooks = self._grad_ready_hooks
        hooks.append(hook)

        class _Handle:
            def remove(self) -> None:
                if hook in hooks:
                    hooks.remove(hook)

        return _Handle()

    # -- copies keep the logical shape ----------------------------------------------------
    def __deepcopy__(self, memo: dict) -> "PackedBinaryParameter":
        if id(self) in memo:
            return memo[id(self)]
        result = type(self)(self.data.clone(), self.logical_shape)
        memo[id(self)] = result
        return result

    def __reduce_ex__(self, protocol: int):
        return (_rebuild_packed, (self.data.clone(), tuple(self.logical_shape)))

    def __repr__(self) -> str:
        return f"PackedBinaryParameter(logical_shape={list(self.logical_shape)}, bytes={self.numel()})"


def _rebuild_packed(data: Tensor, shape: tuple[int, ...]) -> PackedBinaryParameter:
    return PackedBinaryParameter(data, shape)


def is_packed(p: Tensor) -> bool:
    """True for a :class:`PackedBinaryParameter`."""
    return isinstance(p, PackedBinaryParameter)


def binary_shape(p: Tensor) -> torch.Size:
    """The shape of the ±1 weight ``p`` holds (its own shape unless packed)."""
    return p.logical_shape if is_packed(p) else p.shape


def binary_numel(p: Tensor) -> int:
    """The number of binary weights ``p`` holds (packed or not)."""
    return binary_shape(p).numel()


def binary_signs(p: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A binary weight's ±1 values as a new tensor, packed or not (``dtype``: the weight's own, or float32 if packed)."""
    if is_packed(p):
        return p.signs(dtype or torch.float32)
    return p.detach().clone() if dtype is None else p.detach().to(dtype, copy=True)


def binary_grad(p: Tensor) -> Tensor | None:
    """The gradient of a binary weight: ``packed_grad`` when packed, else ``p.grad``."""
    return p.packed_grad if is_packed(p) else p.grad


def clear_binary_grad(p: Tensor) -> None:
    """Drop the gradient of a binary weight (packed or not)."""
    if is_packed(p):
        p.packed_grad = None
    else:
        p.grad = None
