"""The optimizers and schedules a classifier is given, and the plain description a checkpoint keeps of them.

A classifier receives each as LightningCLI's ``OptimizerCallable``/``LRSchedulerCallable`` pattern does: a callable
that builds the object from the parameters (or the optimizer) — a class, a ``functools.partial`` of one, what
jsonargparse makes of ``class_path``/``init_args`` in YAML — or a plain ``{"class_path": ..., "init_args": {...}}``
dict. Its hyper-parameters keep the plain dict (:func:`spec_of`), so checkpoints load with
``torch.load(weights_only=True)``; building from a dict (:func:`factory_of`) only accepts a class already loaded in
this process: a checkpoint never chooses a module to import (docs/reliability.md).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any

Spec = dict[str, Any]
_PLAIN = (str, int, float, bool, type(None))


def class_path_of(cls: type) -> str:
    """The shortest ``module.Name`` that names ``cls`` (``torch.optim.SGD``, not ``torch.optim.sgd.SGD``)."""
    parts = cls.__module__.split(".")
    for end in range(1, len(parts) + 1):
        module = ".".join(parts[:end])
        if getattr(sys.modules.get(module), cls.__qualname__, None) is cls:
            return f"{module}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def plain(value: Any, name: str) -> Any:
    """``value`` as plain values (tuples become lists); ``ValueError`` naming ``name`` for anything else."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{name}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: plain(v, f"{name}.{k}") for k, v in value.items()}
    raise ValueError(f"{name} must be a plain value (number, string, list, dict) to be kept in a checkpoint, "
                     f"got {value!r}")


def _class_and_kwargs(value: Any) -> tuple[type, dict[str, Any]] | None:
    """The class a callable builds and its keyword arguments: a class, a ``partial`` of one, or jsonargparse's
    ``partial`` of its instantiator and the class; ``None`` for any other callable."""
    if inspect.isclass(value):
        return value, {}
    if isinstance(value, functools.partial):
        if inspect.isclass(value.func) and not value.args:
            return value.func, dict(value.keywords)
        classes = [a for a in value.args if inspect.isclass(a)]
        if value.func.__module__.startswith("jsonargparse") and len(classes) == 1 and value.args[-1] is classes[0]:
            return classes[0], dict(value.keywords)
    return None


def _check_spec(value: Mapping[str, Any], name: str) -> Spec:
    extra = sorted(set(value) - {"class_path", "init_args"})
    if extra or not isinstance(value.get("class_path"), str):
        raise ValueError(f"{name} must be a class, a functools.partial of one, or a dict with a 'class_path' string "
                         f"and 'init_args', got {dict(value)!r}")
    init_args = value.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise ValueError(f"{name}.init_args must be a dict, got {init_args!r}")
    return {"class_path": value["class_path"], "init_args": plain(dict(init_args), f"{name}.init_args")}


def spec_of(value: Any, name: str) -> Spec:
    """The plain ``{"class_path", "init_args"}`` description of an optimizer or schedule argument."""
    if isinstance(value, Mapping):
        return _check_spec(value, name)
    found = _class_and_kwargs(value)
    if found is None:
        raise ValueError(f"{name} must be a class, a functools.partial of one, or a {{'class_path', 'init_args'}} "
                         f"dict (a checkpoint keeps it as plain values), got {value!r}")
    cls, kwargs = found
    return {"class_path": class_path_of(cls), "init_args": plain(kwargs, f"{name}.init_args")}


def loaded_class(class_path: str, name: str, base: type) -> type:
    """The ``base`` subclass ``class_path`` names, looked up among loaded modules only (nothing is imported)."""
    module, _, attr = class_path.rpartition(".")
    found = getattr(sys.modules.get(module), attr, None) if module else None
    if not (inspect.isclass(found) and issubclass(found, base)):
        raise ValueError(f"{name}: class_path {class_path!r} is not a {base.__name__} subclass loaded in this process; "
                         "nothing was imported (import its module first if you trust it)")
    return found


def factory_of(value: Any, name: str, base: type) -> Callable[..., Any]:
    """A callable building the object: ``value`` itself, or the class of a plain spec with its ``init_args``."""
    if isinstance(value, Mapping):
        spec = _check_spec(value, name)
        return functools.partial(loaded_class(spec["class_path"], name, base), **spec["init_args"])
    if not callable(value):
        raise ValueError(f"{name} must be a class, a functools.partial of one, or a {{'class_path', 'init_args'}} "
                         f"dict, got {value!r}")
    return value


def class_paths_in(hparams: Any, prefix: str = "hyper_parameters") -> list[tuple[str, str]]:
    """Every ``(where, class_path)`` nested in saved hyper-parameters (the specs of optimizers and schedules)."""
    found = []
    if isinstance(hparams, Mapping):
        if isinstance(hparams.get("class_path"), str):
            found.append((prefix, hparams["class_path"]))
        for key, value in hparams.items():
            found += class_paths_in(value, f"{prefix}.{key}")
    elif isinstance(hparams, (list, tuple)):
        for i, value in enumerate(hparams):
            found += class_paths_in(value, f"{prefix}[{i}]")
    return found


def check_class_paths_loaded(hparams: Any) -> None:
    """Raise ``ValueError`` naming the first nested ``class_path`` that names no class loaded in this process (before
    jsonargparse would import its module to resolve it)."""
    for where, class_path in class_paths_in(hparams):
        loaded_class(class_path, where, object)


__all__ = ["check_class_paths_loaded", "class_path_of", "class_paths_in", "factory_of", "loaded_class", "plain",
           "spec_of"]
