"""Packed export of a trained BSNN: binary weights at 1 bit each, everything else as float32.

File layout (little endian)::

    b"BSOPACK1"                      8 bytes, magic + format version
    header length H                  uint32
    header                           H bytes of UTF-8 JSON: {"arch", "kwargs", "tensors": [...], "payload_bytes"}
    payload                          the tensors, back to back, in header order
    CRC-32 of header + payload       uint32

Each entry of ``tensors`` has ``name`` (the ``state_dict`` key), ``shape``, ``dtype`` (of the model) and
``kind``:

* ``binary`` — a binary weight (claimed by ``binary_parameters()``), values exactly ±1, packed 8 per
  byte with ``numpy.packbits`` over the C-order flattening (bit = 1 for +1, most significant bit first);
* ``float32`` — a floating-point parameter or buffer (BatchNorm affine and running statistics, the
  first conv, the classifier) stored as float32;
* ``int`` — an integer scalar (BatchNorm ``num_batches_tracked``) stored in the header as ``value``;
* ``raw`` — any other tensor, its bytes as they are (``dtype`` tells how to read them).

``arch`` and ``kwargs`` rebuild the model with ``bso_lightning.models.build_model``; :func:`load_packed`
does that and loads the tensors back, so the loaded model's outputs are bit-identical in eval mode.

Command line::

    python -m bso_lightning.export CKPT OUT      # Lightning checkpoint of an OnlineClassifier -> packed file
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from bso_lightning.models import ModelSpec, build_model, model_size_bytes
from bso_lightning.nn.routing import split_parameters

__all__ = ["MAGIC", "PackedModelError", "export_packed", "export_checkpoint", "load_packed", "read_header",
           "model_spec_from_hparams", "main"]

MAGIC = b"BSOPACK1"
_LENGTH = struct.Struct("<I")
_FLOAT_KINDS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

PathLike = Union[str, os.PathLike]


class PackedModelError(ValueError):
    """A packed model file is corrupt, truncated or not a packed model at all."""


# --------------------------------------------------------------------------- model spec


def model_spec_from_hparams(hparams: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(arch, factory kwargs) that rebuild the model of an ``OnlineClassifier`` from its hyper-parameters
    (the ones ``OnlineClassifier.__init__`` builds it from: :meth:`bso_lightning.models.ModelSpec.from_hparams`)."""
    spec = ModelSpec.from_hparams(hparams)
    return spec.arch, _jsonable(dict(spec.kwargs))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"model factory argument {value!r} ({type(value).__name__}) cannot be stored in the header")


def _model_and_spec(obj: nn.Module, arch: Optional[str],
                    arch_kwargs: Optional[Mapping[str, Any]]) -> tuple[nn.Module, str, dict[str, Any]]:
    hparams = getattr(obj, "hparams", None)
    inner = getattr(obj, "model", None)
    if arch is None and isinstance(hparams, Mapping) and "arch" in hparams and isinstance(inner, nn.Module):
        spec_arch, kwargs = model_spec_from_hparams(hparams)
        return inner, spec_arch, kwargs
    if arch is None:
        raise ValueError("arch is required to export a plain nn.Module (the header must say how to rebuild it); "
                         "pass arch= and arch_kwargs=, or export the OnlineClassifier itself")
    return obj, arch, _jsonable(dict(arch_kwargs or {}))


# --------------------------------------------------------------------------- export


def _encode(name: str, tensor: Tensor, binary: bool) -> tuple[dict[str, Any], bytes]:
    t = tensor.detach().cpu()
    entry: dict[str, Any] = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    if binary:
        bad = (t != 1) & (t != -1)
        if bool(bad.any()):
            example = t[bad].flatten()[0].item()
            raise ValueError(f"binary tensor {name!r} holds values other than ±1 (e.g. {example!r}); "
                             "only exactly ±1 weights can be packed at 1 bit")
        entry["kind"] = "binary"
        return entry, np.packbits((t > 0).flatten().numpy()).tobytes()
    if t.dtype in _FLOAT_KINDS:
        entry["kind"] = "float32"
        return entry, t.to(torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()
    if t.numel() == 1 and not t.is_complex():
        entry["kind"] = "int" if t.dtype != torch.bool else "bool"
        entry["value"] = t.item()
        return entry, b""
    entry["kind"] = "raw"
    return entry, t.contiguous().view(torch.uint8).numpy().tobytes()


def export_packed(model: nn.Module, path: PathLike, arch: Optional[str] = None,
                  arch_kwargs: Optional[Mapping[str, Any]] = None) -> int:
    """Write ``model`` to ``path`` in the packed format; returns the file size in bytes.

    ``model`` is an ``OnlineClassifier`` (its ``model`` is exported; arch and factory kwargs come from
    its hyper-parameters) or a plain model built by ``build_model(arch, **arch_kwargs)`` — then ``arch``
    and ``arch_kwargs`` are required. Raises ValueError if a binary weight holds values other than ±1
    or if ``build_model(arch, **kwargs)`` would not rebuild a model with the same tensors.
    """
    model, arch, kwargs = _model_and_spec(model, arch, arch_kwargs)
    state = model.state_dict(keep_vars=True)
    _check_rebuildable(arch, kwargs, state)
    binary_ids = {id(p) for p in split_parameters(model).binary}
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, tensor in state.items():
        entry, data = _encode(name, tensor, id(tensor) in binary_ids)
        entry["nbytes"] = len(data)
        entries.append(entry)
        chunks.append(data)
    payload = b"".join(chunks)
    header = json.dumps({"arch": arch, "kwargs": kwargs, "tensors": entries, "payload_bytes": len(payload)},
                        separators=(",", ":")).encode("utf-8")
    body = header + payload
    blob = MAGIC + _LENGTH.pack(len(header)) + body + _LENGTH.pack(zlib.crc32(body))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(blob)


def _check_rebuildable(arch: str, kwargs: dict[str, Any], state: Mapping[str, Tensor]) -> None:
    try:
        with torch.device("meta"):
            fresh = build_model(arch, **kwargs)
    except Exception as exc:  # noqa: BLE001 - report what the header would fail to rebuild
        raise ValueError(f"build_model({arch!r}, **{kwargs}) fails, so the export could not be loaded: {exc}") from exc
    expected = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in state.items()}
    if expected != actual:
        diff = sorted(set(expected.items()) ^ set(actual.items()))[:5]
        raise ValueError(f"build_model({arch!r}, **{kwargs}) builds a model with other tensors than the one "
                         f"exported (first differences: {diff})")


# --------------------------------------------------------------------------- load


def _read(path: PathLike) -> tuple[dict[str, Any], bytes]:
    path = Path(path)
    blob = path.read_bytes()
    fixed = len(MAGIC) + _LENGTH.size
    if len(blob) < fixed or blob[: len(MAGIC)] != MAGIC:
        raise PackedModelError(f"{path}: not a packed BSO model (bad magic; expected {MAGIC!r})")
    (header_len,) = _LENGTH.unpack_from(blob, len(MAGIC))
    if fixed + header_len + _LENGTH.size > len(blob):
        raise PackedModelError(f"{path}: truncated file ({len(blob)} bytes; the header alone needs {header_len})")
    body = blob[fixed:-_LENGTH.size]
    try:
        header = json.loads(body[:header_len].decode("utf-8"))
        payload_bytes = int(header["payload_bytes"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise PackedModelError(f"{path}: corrupt header ({exc})") from exc
    if header_len + payload_bytes != len(body):
        raise PackedModelError(f"{path}: truncated or padded file: {len(blob)} bytes, the header announces "
                               f"{fixed + header_len + payload_bytes + _LENGTH.size}")
    (crc,) = _LENGTH.unpack_from(blob, len(blob) - _LENGTH.size)
    if zlib.crc32(body) != crc:
        raise PackedModelError(f"{path}: checksum mismatch (the file is corrupt)")
    return header, body[header_len:]


def read_header(path: PathLike) -> dict[str, Any]:
    """The verified header of a packed file (arch, kwargs, tensor table)."""
    return _read(path)[0]


def _decode(entry: Mapping[str, Any], data: bytes) -> Tensor:
    shape = tuple(entry["shape"])
    numel = math.prod(shape)
    dtype = getattr(torch, entry["dtype"])
    kind = entry["kind"]
    if kind == "binary":
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=numel)
        return torch.from_numpy(bits.astype(np.float32) * 2 - 1).reshape(shape).to(dtype)
    if kind == "float32":
        return torch.from_numpy(np.frombuffer(data, dtype="<f4").copy()).reshape(shape).to(dtype)
    if kind in ("int", "bool"):
        return torch.full(shape, entry["value"], dtype=dtype)
    if kind == "raw":
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape).clone()
    raise ValueError(f"unknown tensor kind {kind!r}")


def load_packed(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """Rebuild the model saved by :func:`export_packed` and load its tensors; returned in eval mode."""
    header, payload = _read(path)
    tensors: dict[str, Tensor] = {}
    offset = 0
    try:
        for entry in header["tensors"]:
            nbytes = int(entry["nbytes"])
            tensors[entry["name"]] = _decode(entry, payload[offset:offset + nbytes])
            offset += nbytes
        model = build_model(header["arch"], **header["kwargs"])
        model.load_state_dict(tensors, strict=True)
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
        raise PackedModelError(f"{path}: cannot rebuild the model from the file: {exc}") from exc
    return model.to(map_location).eval()


# --------------------------------------------------------------------------- checkpoints and CLI


def export_checkpoint(checkpoint: PathLike, out: PathLike) -> int:
    """Export the model of an ``OnlineClassifier`` Lightning checkpoint; returns the file size."""
    checkpoint = Path(checkpoint)
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise ValueError(f"{checkpoint}: cannot read the checkpoint ({type(exc).__name__}: {exc})") from exc
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, Mapping) else None
    if not isinstance(hparams, Mapping) or "arch" not in hparams or "state_dict" not in ckpt:
        raise ValueError(f"{checkpoint}: not a checkpoint of an OnlineClassifier (no hyper_parameters.arch "
                         "or state_dict)")
    arch, kwargs = model_spec_from_hparams(hparams)
    model = build_model(arch, **kwargs)
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{checkpoint}: the state_dict does not fit {arch}(**{kwargs}): {exc}") from exc
    return export_packed(model, out, arch=arch, arch_kwargs=kwargs)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bso_lightning.export",
                                     description="Pack the model of an OnlineClassifier checkpoint at 1 bit per "
                                                 "binary weight (load it with bso_lightning.export.load_packed).")
    parser.add_argument("checkpoint", help="Lightning checkpoint (.ckpt) of an OnlineClassifier")
    parser.add_argument("out", help="output file")
    args = parser.parse_args(argv)
    try:
        size = export_checkpoint(args.checkpoint, args.out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    model = load_packed(args.out)
    print(f"wrote {args.out}: {size} bytes ({size / 1e6:.3f} MB); model size by the paper's rule "
          f"{model_size_bytes(model)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
