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
import inspect
import json
import math
import os
import struct
import sys
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from bso_lightning.atomic import atomic_file, refuse_overwriting
from bso_lightning.checkpoints import build_model_from_checkpoint
from bso_lightning.models import ARCHITECTURES, ModelSpec, build_model, model_size_bytes
from bso_lightning.nn.packed import binary_shape, is_packed, pack_signs, unpack_signs
from bso_lightning.nn.routing import split_parameters

__all__ = ["MAGIC", "PackedModelError", "export_packed", "export_checkpoint", "load_packed", "read_header",
           "model_spec_from_hparams", "model_to_export", "checkpoint_parser", "main"]

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
    if is_packed(tensor):  # written straight from the 1-bit training state: the bits are already this format
        entry = {"name": name.removesuffix("_bits"), "shape": list(tensor.logical_shape), "dtype": "float32",
                 "kind": "binary"}
        return entry, tensor.detach().cpu().numpy().tobytes()
    t = tensor.detach().cpu()
    entry: dict[str, Any] = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    if binary:
        entry["kind"] = "binary"
        return entry, _pack_binary(name, t)
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"tensor {name!r} holds NaN/Inf ({int((~torch.isfinite(t)).sum())} of {t.numel()} values): "
                         "a model with a non-finite state is not exported")
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
    with atomic_file(path) as tmp:
        tmp.write_bytes(blob)
    return len(blob)


def _check_rebuildable(arch: str, kwargs: dict[str, Any], state: Mapping[str, Tensor]) -> None:
    try:
        with torch.device("meta"):
            fresh = build_model(arch, **kwargs)
    except Exception as exc:  # noqa: BLE001 - report what the header would fail to rebuild
        raise ValueError(f"build_model({arch!r}, **{kwargs}) fails, so the export could not be loaded: {exc}") from exc
    expected = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    actual = {(k.removesuffix("_bits") if is_packed(v) else k): tuple(binary_shape(v)) for k, v in state.items()}
    if expected != actual:
        diff = sorted(set(expected.items()) ^ set(actual.items()))[:5]
        raise ValueError(f"build_model({arch!r}, **{kwargs}) builds a model with other tensors than the one "
                         f"exported (first differences: {diff})")


# --------------------------------------------------------------------------- load

#: dtype names a header may use (never ``getattr(torch, name)`` on a string from a file).
_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
    "int8": torch.int8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64, "uint8": torch.uint8,
    "bool": torch.bool,
}
_KINDS = ("binary", "float32", "int", "bool", "raw")
_HEADER_KEYS = {"arch", "kwargs", "tensors", "payload_bytes"}
_ENTRY_KEYS = {"name", "shape", "dtype", "kind", "nbytes"}
MAX_HEADER_BYTES = 16 * 2**20
#: Bounds of a factory argument read from a header: integers, finite floats, short strings, short lists.
MAX_KWARG_INT, MAX_KWARG_STR, MAX_KWARG_LIST = 1_000_000, 64, 64
MAX_DIM, MAX_NDIM = 2**31 - 1, 8


def _fail(path: PathLike, field: str, problem: str) -> PackedModelError:
    return PackedModelError(f"{path}: {field}: {problem}")


def _read(path: PathLike) -> tuple[dict[str, Any], bytes]:
    """The header (every field checked against the payload by :func:`_check_header`) and the payload."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise PackedModelError(f"{path}: cannot be read ({exc})") from exc
    fixed = len(MAGIC) + _LENGTH.size
    if len(blob) < fixed or blob[: len(MAGIC)] != MAGIC:
        raise _fail(path, "magic", f"not a packed BSO model (the file does not start with {MAGIC!r})")
    (header_len,) = _LENGTH.unpack_from(blob, len(MAGIC))
    if header_len > MAX_HEADER_BYTES or fixed + header_len + _LENGTH.size > len(blob):
        raise _fail(path, "header length", f"{header_len} bytes, but the file holds {len(blob)} bytes "
                                           f"(truncated, or not a packed model; at most {MAX_HEADER_BYTES})")
    body = blob[fixed:-_LENGTH.size]
    (crc,) = _LENGTH.unpack_from(blob, len(blob) - _LENGTH.size)
    if zlib.crc32(body) != crc:
        raise _fail(path, "checksum", "CRC-32 mismatch (the file is corrupt or truncated)")
    try:
        header = json.loads(body[:header_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(path, "header", f"not valid UTF-8 JSON ({exc})") from exc
    payload = body[header_len:]
    _check_header(path, header, len(payload))
    return header, payload


def _check_kwarg(path: PathLike, field: str, value: Any, depth: int = 0) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not -MAX_KWARG_INT <= value <= MAX_KWARG_INT:
            raise _fail(path, field, f"{value} is out of range [-{MAX_KWARG_INT}, {MAX_KWARG_INT}]")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(path, field, f"{value} is not finite")
    elif isinstance(value, str):
        if len(value) > MAX_KWARG_STR:
            raise _fail(path, field, f"a string of {len(value)} characters (at most {MAX_KWARG_STR})")
    elif isinstance(value, list) and depth == 0:
        if len(value) > MAX_KWARG_LIST:
            raise _fail(path, field, f"a list of {len(value)} items (at most {MAX_KWARG_LIST})")
        for i, item in enumerate(value):
            _check_kwarg(path, f"{field}[{i}]", item, depth + 1)
    else:
        raise _fail(path, field, f"{type(value).__name__} is not a plain factory argument (bool, int, float, "
                                 "str, None or a flat list of those)")


#: Bound on the per-time-step BatchNorm slots a header may ask for (each slot is two float32 per channel).
MAX_BATCHNORM_TIME_STEPS = 4096


def _check_spec(path: PathLike, arch: Any, kwargs: Any) -> None:
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise _fail(path, "header.arch", f"{arch!r} is not one of {sorted(ARCHITECTURES)}")
    if not isinstance(kwargs, dict):
        raise _fail(path, "header.kwargs", f"must be an object, got {type(kwargs).__name__}")
    parameters = dict(inspect.signature(ARCHITECTURES[arch]).parameters)
    parameters["batchnorm_time_steps"] = inspect.Parameter("batchnorm_time_steps", inspect.Parameter.KEYWORD_ONLY,
                                                           default=None)  # (build_model's own argument)
    steps = kwargs.get("batchnorm_time_steps")
    if steps is not None and not (type(steps) is int and 1 <= steps <= MAX_BATCHNORM_TIME_STEPS):
        raise _fail(path, "header.kwargs.batchnorm_time_steps",
                    f"must be null or an int in [1, {MAX_BATCHNORM_TIME_STEPS}], got {steps!r}")
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for key, value in kwargs.items():
        if not takes_any and key not in parameters:
            raise _fail(path, f"header.kwargs.{key}", f"{arch} takes no argument {key!r} "
                                                     f"(it takes {', '.join(parameters)})")
        _check_kwarg(path, f"header.kwargs.{key}", value)
        default = parameters[key].default if key in parameters else None
        expected = type(default) if isinstance(default, (bool, int, float, str)) else None
        if expected is not None and value is not None and not (
                type(value) is expected or (expected is float and type(value) is int)):
            raise _fail(path, f"header.kwargs.{key}", f"{value!r} is a {type(value).__name__}, {arch} takes a "
                                                     f"{expected.__name__} (default {default!r})")


def _entry_nbytes(entry: Mapping[str, Any], numel: int) -> int:
    """The payload size an entry's kind, dtype and shape imply."""
    kind = entry["kind"]
    if kind == "binary":
        return (numel + 7) // 8
    if kind == "float32":
        return 4 * numel
    if kind == "raw":
        return numel * _DTYPES[entry["dtype"]].itemsize
    return 0  # int, bool: the value is in the header


def _check_entry(path: PathLike, i: int, entry: Any) -> int:
    """Check one ``tensors`` entry on its own; returns its payload size."""
    where = f"header.tensors[{i}]"
    if not isinstance(entry, dict):
        raise _fail(path, where, f"must be an object, got {type(entry).__name__}")
    keys = set(entry)
    required = _ENTRY_KEYS | ({"value"} if isinstance(entry.get("kind"), str) and entry["kind"] in ("int", "bool")
                              else set())
    if keys != required:
        raise _fail(path, where, f"keys {sorted(keys)}, expected {sorted(required)}")
    if not isinstance(entry["name"], str) or not entry["name"]:
        raise _fail(path, f"{where}.name", f"must be a non-empty string, got {entry['name']!r}")
    where = f"header.tensors[{i}] ({entry['name']})"
    shape = entry["shape"]
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape)):
        raise _fail(path, f"{where}.shape", f"{shape!r} is not a list of at most {MAX_NDIM} sizes in [0, {MAX_DIM}]")
    if not isinstance(entry["dtype"], str) or entry["dtype"] not in _DTYPES:
        raise _fail(path, f"{where}.dtype", f"{entry['dtype']!r} is not one of {sorted(_DTYPES)}")
    dtype, kind = _DTYPES[entry["dtype"]], entry["kind"]
    if not isinstance(kind, str) or kind not in _KINDS:
        raise _fail(path, f"{where}.kind", f"{kind!r} is not one of {list(_KINDS)}")
    numel = math.prod(shape)
    if kind in ("binary", "float32") and not dtype.is_floating_point:
        raise _fail(path, f"{where}.dtype", f"a {kind} tensor must have a floating-point dtype, got {entry['dtype']}")
    if kind in ("int", "bool"):
        value = entry["value"]
        if numel != 1:
            raise _fail(path, f"{where}.shape", f"an {kind} entry holds one value, shape {shape} has {numel}")
        if kind == "bool" and (dtype is not torch.bool or not isinstance(value, bool)):
            raise _fail(path, f"{where}.value", f"a bool entry needs dtype bool and a true/false value, got "
                                                f"{entry['dtype']} {value!r}")
        if kind == "int":
            if dtype.is_floating_point or dtype is torch.bool or isinstance(value, bool) or not isinstance(value, int):
                raise _fail(path, f"{where}.value", f"an int entry needs an integer dtype and value, got "
                                                    f"{entry['dtype']} {value!r}")
            info = torch.iinfo(dtype)
            if not info.min <= value <= info.max:
                raise _fail(path, f"{where}.value", f"{value} does not fit {entry['dtype']}")
    nbytes = entry["nbytes"]
    expected = _entry_nbytes(entry, numel)
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes != expected:
        raise _fail(path, f"{where}.nbytes", f"{nbytes!r}, but a {kind} tensor of shape {shape} and dtype "
                                             f"{entry['dtype']} takes {expected} bytes")
    return nbytes


def _check_header(path: PathLike, header: Any, payload_len: int) -> None:
    """Every header field, against the payload and the model the header names (built on the meta device: no
    memory is allocated and nothing is loaded before this passes)."""
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        got = sorted(header) if isinstance(header, dict) else type(header).__name__
        raise _fail(path, "header", f"keys {got}, expected {sorted(_HEADER_KEYS)}")
    payload_bytes = header["payload_bytes"]
    if not isinstance(payload_bytes, int) or isinstance(payload_bytes, bool) or payload_bytes != payload_len:
        raise _fail(path, "header.payload_bytes", f"{payload_bytes!r}, but the file holds {payload_len} payload bytes "
                                                  "(truncated or padded)")
    _check_spec(path, header["arch"], header["kwargs"])
    tensors = header["tensors"]
    if not isinstance(tensors, list):
        raise _fail(path, "header.tensors", f"must be a list, got {type(tensors).__name__}")
    total = sum(_check_entry(path, i, entry) for i, entry in enumerate(tensors))
    if total != payload_len:
        raise _fail(path, "header.tensors", f"the entries' nbytes add up to {total}, the payload holds {payload_len}")
    try:
        with torch.device("meta"):
            reference = build_model(header["arch"], **header["kwargs"])
    except Exception as exc:  # noqa: BLE001 - a factory rejects its arguments in many ways
        raise _fail(path, "header.kwargs", f"build_model({header['arch']!r}, **{header['kwargs']}) fails: "
                                           f"{type(exc).__name__}: {exc}") from exc
    expected = reference.state_dict()
    binary = {id(p) for p in split_parameters(reference).binary}
    binary_names = {name for name, p in reference.named_parameters() if id(p) in binary}
    names = [entry["name"] for entry in tensors]
    if names != list(expected):
        missing = [n for n in expected if n not in names][:3]
        extra = [n for n in names if n not in expected][:3]
        raise _fail(path, "header.tensors", f"the names do not match the tensors of {header['arch']}"
                                            f"(**{header['kwargs']}) (missing {missing}, unexpected {extra}, "
                                            "or another order)")
    for i, entry in enumerate(tensors):
        name, ref = entry["name"], expected[entry["name"]]
        where = f"header.tensors[{i}] ({name})"
        if tuple(entry["shape"]) != tuple(ref.shape):
            raise _fail(path, f"{where}.shape", f"{entry['shape']}, but {header['arch']}(**{header['kwargs']}) "
                                                f"has {list(ref.shape)}")
        if _DTYPES[entry["dtype"]] != ref.dtype:
            raise _fail(path, f"{where}.dtype", f"{entry['dtype']}, but the model has {str(ref.dtype)[6:]}")
        if (entry["kind"] == "binary") != (name in binary_names):
            raise _fail(path, f"{where}.kind", f"{entry['kind']!r}, but {name} is "
                                               f"{'a' if name in binary_names else 'not a'} binary weight")


def read_header(path: PathLike) -> dict[str, Any]:
    """The verified header of a packed file (arch, kwargs, tensor table)."""
    return _read(path)[0]


def _pack_binary(name: str, tensor: Tensor) -> bytes:
    """One binary weight (exactly ±1) at 1 bit each (``nn.packed.pack_signs``: ``numpy.packbits`` order over the
    C-order flattening, bit 1 for +1, most significant bit first, the last byte zero-padded); ``ValueError``
    naming the tensor for any other value."""
    return pack_signs(tensor.detach().cpu(), name).numpy().tobytes()


def _unpack_binary(data: bytes, shape: tuple[int, ...], dtype: torch.dtype) -> Optional[Tensor]:
    """Inverse of :func:`_pack_binary` (``nn.packed.unpack_signs``); ``None`` if the padding bits of the last byte
    are not zero."""
    bits = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
    padding = (-math.prod(shape)) % 8
    if padding and int(bits[-1]) & ((1 << padding) - 1):
        return None
    return unpack_signs(bits, shape, dtype)


def _decode(path: PathLike, i: int, entry: Mapping[str, Any], data: bytes) -> Tensor:
    """One tensor of a checked entry (its size matches ``data``)."""
    shape, dtype, kind = tuple(entry["shape"]), _DTYPES[entry["dtype"]], entry["kind"]
    where = f"tensors[{i}] ({entry['name']})"
    if kind == "binary":
        tensor = _unpack_binary(data, shape, dtype)
        if tensor is None:
            raise _fail(path, where, "the padding bits after the last weight are not zero (corrupt payload)")
        return tensor
    if kind in ("int", "bool"):
        return torch.full(shape, entry["value"], dtype=dtype)
    if kind == "float32":
        tensor = torch.from_numpy(np.frombuffer(data, dtype="<f4").copy()).reshape(shape).to(dtype)
    else:
        tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape).clone()
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise _fail(path, where, f"holds non-finite values ({int((~torch.isfinite(tensor)).sum())} NaN/Inf)")
    return tensor


def load_packed(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """Rebuild the model saved by :func:`export_packed` and load its tensors; returned in eval mode.

    Every header field is checked against the payload and the named architecture before anything is allocated
    or built; any malformed file raises :class:`PackedModelError` naming the file and the field.
    """
    header, payload = _read(path)
    tensors: dict[str, Tensor] = {}
    offset = 0
    for i, entry in enumerate(header["tensors"]):
        nbytes = entry["nbytes"]
        tensors[entry["name"]] = _decode(path, i, entry, payload[offset:offset + nbytes])
        offset += nbytes
    try:
        model = build_model(header["arch"], **header["kwargs"])
        model.load_state_dict(tensors, strict=True)
    except (ValueError, TypeError, RuntimeError) as exc:  # not expected after the checks; still named
        raise _fail(path, "tensors", f"cannot rebuild the model from the file: {exc}") from exc
    return model.to(map_location).eval()


# --------------------------------------------------------------------------- checkpoints and CLI


def model_to_export(checkpoint: PathLike, out: PathLike) -> tuple[nn.Module, Mapping[str, Any], str, dict[str, Any]]:
    """(model, hyper-parameters, arch, factory kwargs) of an ``OnlineClassifier`` Lightning checkpoint about to be
    exported into ``out`` (by :func:`export_checkpoint` and :func:`bso_lightning.interop.nir.export_checkpoint_nir`).

    ``out`` naming the checkpoint itself is refused first. The checkpoint is read and its model built by
    :func:`bso_lightning.checkpoints.build_model_from_checkpoint` (``weights_only=True``, size bounds before
    building): a ``CheckpointError`` (a ``ValueError``) names the file.
    """
    checkpoint = Path(checkpoint)
    refuse_overwriting(checkpoint, out)
    model, hparams = build_model_from_checkpoint(checkpoint)
    return (model, hparams, *model_spec_from_hparams(hparams))


def export_checkpoint(checkpoint: PathLike, out: PathLike) -> int:
    """Export the model of an ``OnlineClassifier`` Lightning checkpoint; returns the file size.

    The checkpoint is read and its model built by :func:`model_to_export` (``weights_only=True``, size bounds
    before building): a ``CheckpointError`` (a ``ValueError``) names the file.
    """
    model, _, arch, kwargs = model_to_export(checkpoint, out)
    return export_packed(model, out, arch=arch, arch_kwargs=kwargs)


def checkpoint_parser(prog: str, description: str, out_help: str) -> argparse.ArgumentParser:
    """The command line of an export from a checkpoint (this module's and :mod:`bso_lightning.export_nir`'s):
    ``CHECKPOINT OUT``, more options added by the caller."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("checkpoint", help="Lightning checkpoint (.ckpt) of an OnlineClassifier")
    parser.add_argument("out", help=out_help)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = checkpoint_parser("python -m bso_lightning.export", "Pack the model of an OnlineClassifier checkpoint "
                               "at 1 bit per binary weight (load it with bso_lightning.export.load_packed).",
                               "output file")
    args = parser.parse_args(argv)
    try:
        size = export_checkpoint(args.checkpoint, args.out)
    except (ValueError, OSError) as exc:  # (OSError: a full disk, a folder that cannot be written)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    model = load_packed(args.out)
    print(f"wrote {args.out}: {size} bytes ({size / 1e6:.3f} MB); model size by the paper's rule "
          f"{model_size_bytes(model)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
