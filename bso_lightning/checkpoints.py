"""Checkpoint files given by a user: read safely, checked against the model, bounded before anything is built.

Every path that reads a user-given checkpoint goes through here: ``--ckpt_path`` and ``--model.init_args.pretrained``
(the CLI), ``load_from_checkpoint``, ``OnlineClassifier(pretrained=...)``, the packed export
(``python -m bso_lightning.export``) and the NIR export. Nothing here needs a LightningModule.

* :func:`read_checkpoint` loads with ``torch.load(weights_only=True)`` and raises :class:`CheckpointError` naming
  the file for a missing, empty, truncated or unreadable file and for one holding other objects than tensors and
  plain values (their code does not run; :data:`TRUST_HINT` names the opt-in); :func:`check_checkpoint` also
  refuses another architecture (:func:`check_compatible`).
* :func:`check_model_bounds` holds the hyper-parameters of a file to :data:`MAX_FACTORY_INT` and
  :data:`MAX_MODEL_VALUES` before a model is built; :func:`check_state_dict_fits`, :func:`check_same_time_steps`
  and :func:`check_binary_weights` refuse weights that do not fit their hyper-parameters, another ``time_steps``
  on resume, or binary weights that are not ±1; :func:`check_loaded_state` refuses NaN/Inf weights.
* The model of a checkpoint: :func:`build_model_from_checkpoint` (the exporters: read, bounded, built from the
  file's hyper-parameters, loaded) and :func:`load_model_weights` (``pretrained``: into a model that exists).

See docs/reliability.md.
"""

from __future__ import annotations

import os
import pickletools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional

import torch
from torch import Tensor, nn

#: Hyper-parameters that fix the shapes of the weights and the layout of the optimizer state:
#: a checkpoint can only be resumed by a model that agrees on all of them.
ARCHITECTURE_KEYS = ("arch", "arch_kwargs", "num_classes", "in_channels", "optimizer")

#: ``ckpt_path`` values that Lightning resolves itself (not file names).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable (e.g. truncated) or from a different architecture."""

    def __init__(self, path: Any, message: str) -> None:
        self.path = path
        super().__init__(f"checkpoint {os.fspath(path)!s}: {message}")


def _normalise(key: str, value: Any) -> Any:
    if key == "arch_kwargs":
        return dict(value or {})
    return value


def check_compatible(saved: Mapping[str, Any], current: Mapping[str, Any], path: Any = "<checkpoint>") -> None:
    """Raise :class:`CheckpointError` if ``saved`` and ``current`` hyper-parameters disagree on an
    :data:`ARCHITECTURE_KEYS` entry (only keys present in both are compared)."""
    mismatches = [
        f"{key}: checkpoint {_normalise(key, saved[key])!r}, model {_normalise(key, current[key])!r}"
        for key in ARCHITECTURE_KEYS
        if key in saved and key in current and _normalise(key, saved[key]) != _normalise(key, current[key])
    ]
    if mismatches:
        raise CheckpointError(
            path,
            "was written by a different architecture (" + "; ".join(mismatches) + "). Build the model with the "
            "checkpoint's settings, or start a new run instead of resuming.",
        )


#: How to opt in to a full unpickle, named in the error for a checkpoint that holds more than tensors and plain values.
TRUST_HINT = (
    "Code in a checkpoint is never run: it is read with torch.load(weights_only=True), which allows only tensors "
    "and plain Python values. If you wrote this file yourself and trust it, opt in to a full unpickle (it runs "
    "whatever code the file holds): on the command line with `--weights_only false`, in Python with "
    "trainer.fit(..., weights_only=False); or convert it once in a trusted session (torch.load the file with "
    "weights_only=False and torch.save a copy without the foreign objects)"
)


#: What ``torch.load(weights_only=True)`` says when it refuses an object the file names (torch 2.11 wording).
_REFUSED_OBJECT = re.compile(r"Unsupported global: (?:GLOBAL )?[^\s,]+|unsupported GLOBAL [^\s,]+|"
                             r"Can only (?:create new object|build)[^\n]*?but got [^\n]+|"
                             r"Trying to call reduce for unrecognized function [^\s,]+")
_PICKLE_OPCODES = {op.code for op in pickletools.opcodes}


def _refused_object(error: BaseException) -> Optional[str]:
    """What ``torch.load(weights_only=True)`` refused to build (a global, a pickle instruction), or ``None`` when the
    file is simply damaged (random bytes give "Unsupported operand" with a byte that is no pickle instruction)."""
    text = str(error)
    refused = _REFUSED_OBJECT.search(text)
    if refused:
        return refused.group(0).strip()
    operand = re.search(r"Unsupported operand (\d+)", text)
    if operand and int(operand.group(1)) < 256 and chr(int(operand.group(1))) in _PICKLE_OPCODES:
        return f"the pickle instruction {chr(int(operand.group(1)))!r}, which only a full unpickle executes"
    return None


def _is_refused_unpickle(error: BaseException) -> bool:
    """True if ``torch.load(weights_only=True)`` refused an object (as opposed to a damaged file)."""
    return _refused_object(error) is not None


def read_checkpoint(path: Any) -> dict[str, Any]:
    """Load a checkpoint file safely: ``torch.load(weights_only=True)``, tensors memory-mapped where possible.

    Raises :class:`CheckpointError` naming the file for a missing, empty, truncated or unreadable file and for
    one that holds objects other than tensors and plain values (whose code is not run; see :data:`TRUST_HINT`).
    """
    if not os.path.isfile(path):
        raise CheckpointError(path, "no such file" if not os.path.exists(path) else "is not a file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(path, "is empty (0 bytes): the job was probably killed while saving it")
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as mmap_error:  # noqa: BLE001 - legacy (non-zip) files cannot be memory-mapped
        if _is_refused_unpickle(mmap_error):
            raise CheckpointError(path, f"holds objects that are not tensors or plain values "
                                        f"(refused: {_refused_object(mmap_error)}). {TRUST_HINT}.") from None
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - reported with the file's path
            if _is_refused_unpickle(error):
                raise CheckpointError(path, f"holds objects that are not tensors or plain values "
                                            f"(refused: {_refused_object(error)}). {TRUST_HINT}.") from None
            raise CheckpointError(
                path,
                f"cannot be read ({type(error).__name__}: {_first_line(error)}); it is truncated or corrupt (e.g. the "
                "job was killed while saving it). Resume from an earlier checkpoint.",
            ) from mmap_error
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise CheckpointError(path, "is not a Lightning checkpoint (no 'state_dict' entry)")
    return dict(checkpoint)


def _first_line(error: BaseException) -> str:
    """The line that matters of a torch.load error: its cause, without torch's advice to load the file with
    ``weights_only=False`` or to allowlist a global (wrong for a file one does not trust)."""
    text = str(error)
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if detail:
        return detail.group(1).strip()
    advice = ("weights_only", "Weights only load failed", "trusted source", "arbitrary code")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not any(a in line for a in advice)]
    return lines[0] if lines else type(error).__name__


def check_checkpoint(path: Any, hparams: Optional[Mapping[str, Any]] = None, trusted: bool = False) -> None:
    """Check that ``path`` is a readable Lightning checkpoint (and, given ``hparams``, of the same architecture).

    Reads it with :func:`read_checkpoint` (``weights_only=True``; tensors memory-mapped, not loaded). With
    ``trusted`` (the user opted in to a full unpickle) only the file itself is checked (exists, not empty): a
    check never unpickles a file fully.
    """
    if trusted:
        if not os.path.isfile(path):
            raise CheckpointError(path, "no such file" if not os.path.exists(path) else "is not a file")
        if os.path.getsize(path) == 0:
            raise CheckpointError(path, "is empty (0 bytes): the job was probably killed while saving it")
        return
    checkpoint = read_checkpoint(path)
    saved = checkpoint.get("hyper_parameters")
    if hparams is not None and isinstance(saved, Mapping):
        check_compatible(saved, hparams, path)


def check_ckpt_path(path: Any, trusted: bool = False) -> None:
    """:func:`check_checkpoint` for a ``ckpt_path`` argument, unless Lightning resolves it itself
    (``"last"``, ``"best"``, ``"hpc"``, ``"registry..."``) or it is a URL."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    if text in SPECIAL_CKPT_PATHS or text.startswith("registry") or "://" in text:
        return
    check_checkpoint(path, trusted=trusted)


def _storage_aliases(saved: Mapping[str, Any], expected: Mapping[str, Any]) -> set[str]:
    """Keys of binary weights stored densely (``X.weight``) on one side and packed (``X.weight_bits``) on the other:
    the binary layers convert those on load (``bso_lightning.nn.layers``), so they are not a mismatch."""
    aliases: set[str] = set()
    for key in expected:
        other = key[: -len("_bits")] if key.endswith(".weight_bits") else key + "_bits" if key.endswith(".weight") else None
        if other is not None and key not in saved and other in saved and other not in expected:
            aliases |= {key, other}
    return aliases


def check_state_dict_fits(saved: Mapping[str, Any], expected: Mapping[str, Tensor], path: Any = "<checkpoint>") -> None:
    """Raise :class:`CheckpointError` if the tensors ``saved`` in a checkpoint do not fit the module whose
    ``state_dict()`` is ``expected`` (missing or unexpected entries, other shapes) — before ``load_state_dict``
    fails with a raw ``RuntimeError``. The module was built from the checkpoint's own hyper-parameters, so a
    mismatch means the file's hyper-parameters and weights disagree."""
    converted = _storage_aliases(saved, expected)
    missing = [k for k in expected if k not in saved and k not in converted]
    unexpected = [k for k in saved if k not in expected and k not in converted]
    shapes = [f"{k}: {list(saved[k].shape)} in the file, {list(v.shape)} in the model" for k, v in expected.items()
              if k in saved and isinstance(saved[k], Tensor) and tuple(saved[k].shape) != tuple(v.shape)]
    problems = ([f"shapes differ ({'; '.join(shapes[:3])}{' ...' if len(shapes) > 3 else ''})"] if shapes else []) + \
               ([f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []) + \
               ([f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}"] if unexpected else [])
    if problems:
        raise CheckpointError(path, "its weights do not fit the model built from its hyper-parameters ("
                              + "; ".join(problems) + "): the file's hyper-parameters and weights disagree (edited "
                              "by hand, or written by other code). Use the checkpoint as it was written.")


#: Largest model a file may describe (parameters + buffers, counted on the ``meta`` device before anything is
#: built): 2**30 values, 4 GiB as float32 — ResNet-18 on ImageNet holds 11.7 M, VGG-11 9.2 M.
MAX_MODEL_VALUES = 2**30
#: Bound of every integer factory argument a file gives (``width``, ``num_classes``, ``time_steps``, ...), as in the
#: packed loader (``bso_lightning.export.MAX_KWARG_INT``).
MAX_FACTORY_INT = 1_000_000


def _check_factory_ints(path: Any, field: str, value: Any) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not -MAX_FACTORY_INT <= value <= MAX_FACTORY_INT:
        raise CheckpointError(path, f"{field}: {value} is out of range [-{MAX_FACTORY_INT}, {MAX_FACTORY_INT}]; "
                                    "nothing was built")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_factory_ints(path, f"{field}.{key}", item)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_factory_ints(path, f"{field}[{i}]", item)


def count_model_values(hparams: Mapping[str, Any]) -> int:
    """Values (parameters + buffers) of the model a task with these hyper-parameters builds, counted on the
    ``meta`` device (no memory allocated), binary weights as dense ones (packing reads values)."""
    import dataclasses

    from bso_lightning.models.spec import ModelSpec

    spec = dataclasses.replace(ModelSpec.from_hparams(hparams), weight_storage="dense")
    with torch.device("meta"):
        model = spec.build()
    return sum(t.numel() for t in model.state_dict().values())


def check_model_bounds(hparams: Mapping[str, Any], path: Any = "<checkpoint>") -> None:
    """Raise :class:`CheckpointError` naming the file and the field if the hyper-parameters of a file describe a
    model out of bounds — an integer factory argument beyond ±:data:`MAX_FACTORY_INT` (``arch_kwargs.width:
    200000``) or more than :data:`MAX_MODEL_VALUES` values in all — before anything is allocated (the model is
    built on the ``meta`` device to count them)."""
    from bso_lightning.models.spec import FACTORY_HPARAMS

    for key in (*FACTORY_HPARAMS, "time_steps", "arch_kwargs"):
        if key in hparams:
            _check_factory_ints(path, f"hyper_parameters.{key}", hparams[key])
    try:
        values = count_model_values(hparams)
    except Exception as error:  # noqa: BLE001 - a factory rejects its arguments in many ways; named with the file
        raise CheckpointError(path, f"its hyper-parameters do not build a model (arch={hparams.get('arch')!r}, "
                                    f"arch_kwargs={hparams.get('arch_kwargs')!r}): {type(error).__name__}: "
                                    f"{_first_line(error)}") from None
    if values > MAX_MODEL_VALUES:
        given = ", ".join(f"{k}={hparams[k]!r}" for k in ("arch", "arch_kwargs", "num_classes", "in_channels",
                                                           "time_steps") if k in hparams)
        raise CheckpointError(path, f"hyper_parameters ({given}) describe a model of {values:,} values, more than "
                                    f"the {MAX_MODEL_VALUES:,} allowed (checkpoints.MAX_MODEL_VALUES); nothing was built")


def check_same_time_steps(saved: Mapping[str, Any], current: Mapping[str, Any], path: Any = "<checkpoint>") -> None:
    """Raise :class:`CheckpointError` naming both values if a checkpoint is resumed with another ``time_steps``:
    T-BSO's second moments, the per-time-step BatchNorm statistics and the run's step counts are per time step.
    (A fine-tune with another T starts from the weights: ``pretrained``.)"""
    if "time_steps" in saved and "time_steps" in current and saved["time_steps"] != current["time_steps"]:
        raise CheckpointError(path, f"was trained with time_steps={saved['time_steps']!r}, this run has "
                                    f"time_steps={current['time_steps']!r}: a resumed run keeps its T. Resume with "
                                    f"time_steps={saved['time_steps']!r}, or start a new run from its weights with "
                                    "pretrained=<checkpoint> (fine-tuning with another T).")


def check_binary_weights(saved: Mapping[str, Any], names: Iterable[str], path: Any = "<checkpoint>") -> None:
    """Raise :class:`CheckpointError` if a binary weight ``names`` (``state_dict`` keys) of a checkpoint is not
    exactly ±1 (e.g. the latent weights of a BPTT run, or a full-precision model): BSO/T-BSO cannot resume it."""
    for name in names:
        value = saved.get(name)
        if isinstance(value, Tensor) and value.is_floating_point():
            bad = (value != 1) & (value != -1)
            if bool(bad.any()):
                example = value[bad].flatten()[0].item()
                raise CheckpointError(
                    path, f"binary weight {name} holds values other than ±1 ({int(bad.sum())} of {value.numel()}, "
                          f"e.g. {example!r}): it was not written by BSO/T-BSO training (latent weights or a "
                          "full-precision model?), so it cannot be resumed. To start a new run from its weights, "
                          "pass it as `--model.init_args.pretrained` (weights are mapped to ±1 by their sign).")


# --------------------------------------------------------------------------- the model of a checkpoint

#: Prefix of the network's entries in the ``state_dict`` of a task (``OnlineClassifier.model``).
MODEL_PREFIX = "model."


def model_weights(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The network's entries of a task checkpoint's ``state_dict``, without the :data:`MODEL_PREFIX`."""
    return {k[len(MODEL_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(MODEL_PREFIX)}


def task_hparams(checkpoint: Mapping[str, Any], path: Any = "<checkpoint>") -> Mapping[str, Any]:
    """The hyper-parameters of a task checkpoint; :class:`CheckpointError` naming the file and the field if it has
    none, or none that name the architecture (``hyper_parameters.arch``)."""
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or "arch" not in hparams:
        raise CheckpointError(path, "is not a checkpoint of an OnlineClassifier (no hyper_parameters.arch)")
    return hparams


def check_loaded_state(state: Mapping[str, Any], path: Any) -> None:
    """Raise :class:`CheckpointError` if a loaded ``state_dict`` holds NaN/Inf (naming each such tensor, with counts)."""
    bad = [f"{name} ({int(torch.isnan(t).sum())} NaN and {int(torch.isinf(t).sum())} Inf of {t.numel()} values)"
           for name, t in state.items()
           if isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(path, f"holds non-finite tensors: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}"
                                    "; it cannot be resumed or used as pretrained weights")


def _load_strict(model: nn.Module, weights: Mapping[str, Any], path: Any, built: str) -> None:
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise CheckpointError(path, f"its model weights do not fit {built}: {error}") from error


def build_model_from_checkpoint(path: Any) -> tuple[nn.Module, Mapping[str, Any]]:
    """The network of a task checkpoint and the checkpoint's hyper-parameters: read safely
    (:func:`read_checkpoint`), its size checked (:func:`check_model_bounds`) before the model is built by the
    factory its hyper-parameters name (``build_model(arch, **kwargs)``, binary weights dense), weights loaded
    as they are (strict). Every failure is a :class:`CheckpointError` naming the file."""
    from bso_lightning.models import ModelSpec, build_model

    checkpoint = read_checkpoint(path)
    hparams = task_hparams(checkpoint, path)
    check_model_bounds(hparams, path)
    spec = ModelSpec.from_hparams(hparams)
    model = build_model(spec.arch, **spec.kwargs)
    _load_strict(model, model_weights(checkpoint), path, f"{spec.arch}(**{dict(spec.kwargs)})")
    return model, hparams


def load_model_weights(model: nn.Module, path: Any, hparams: Optional[Mapping[str, Any]] = None,
                       view: Callable[[Mapping[str, Any]], Mapping[str, Any]] = dict) -> None:
    """Load the network weights of a task checkpoint into ``model`` (``OnlineClassifier(pretrained=...)``).

    The file is read safely (once); ``view`` of its hyper-parameters must agree with ``view(hparams)`` on the
    architecture (:func:`check_compatible`; the classifier passes its ``architecture_view``, so a fine-tune may change
    γ and β); non-finite weights are refused; binary weights that are not ±1 (the latent weights of a BPTT run) are
    mapped to ±1 by their sign. Every failure is a :class:`CheckpointError` naming the file.
    """
    from bso_lightning.nn import BinaryLayer, binarize_

    checkpoint = read_checkpoint(path)
    if hparams is not None and isinstance(checkpoint.get("hyper_parameters"), Mapping):
        check_compatible(view(checkpoint["hyper_parameters"]), view(hparams), path)
    weights = model_weights(checkpoint)
    check_loaded_state(weights, path)
    binary_keys = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, BinaryLayer)}
    for key in binary_keys & weights.keys():
        if weights[key].is_floating_point():
            weights[key] = binarize_(weights[key].clone())
    arch = (hparams or {}).get("arch", type(model).__name__)
    _load_strict(model, weights, path, f"arch {arch!r}")
