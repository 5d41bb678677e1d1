"""Hyper-parameters of the flat classifier constructors (before issue 22) in today's spelling.

Checkpoints written before the optimizers and schedules became objects hold ``optimizer: tbso, threshold: ...,
schedule: run_exp, lr: 0.1, ...``; :func:`translate_legacy` rewrites them as the ``optimizer``/``schedule``/
``fp_optimizer``/``lr_scheduler`` specs and the ``loop`` settings that build the same run, so such a checkpoint
loads (``load_from_checkpoint``, ``--ckpt_path``, ``pretrained``). The model's own names (``arch``, ``arch_kwargs``,
``time_steps``, ``trace``, ...) are unchanged; the neuron's ``decay``/``v_threshold`` move into ``arch_kwargs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OPTIM = "bso_lightning.optim"
#: Keys of the flat OnlineClassifier that the objects now hold.
ONLINE_LEGACY_KEYS = frozenset({
    "threshold", "beta", "betas", "eps", "eps_placement", "reset_momentum_on_flip", "fused_optimizer",
    "momentum_dtype", "step_in_backward", "saved_activation_dtype", "schedule_interval", "schedule_every",
    "schedule_factor", "schedule_scale", "schedule_offset", "schedule_fraction", "schedule_final", "lr",
    "lr_schedule", "momentum", "weight_decay", "cosine_epochs", "mse_weight", "decay", "v_threshold", "update_mode",
    "nonfinite", "max_skipped_fraction"})
#: Keys of the flat baselines (OTTT, BPTT) that the objects now hold.
BASELINE_LEGACY_KEYS = frozenset({"lr", "momentum", "weight_decay", "cosine_epochs", "decay", "v_threshold",
                                  "latent_lr"})
NEURON_DEFAULTS = {"decay": 0.5, "v_threshold": 1.0}


def is_legacy(hparams: Mapping[str, Any], baseline: bool = False) -> bool:
    """Whether ``hparams`` are in the flat spelling (``optimizer: tbso``, ``lr: 0.1``, ...)."""
    if baseline:
        return isinstance(hparams.get("latent_optimizer"), str) or bool(BASELINE_LEGACY_KEYS & set(hparams))
    return isinstance(hparams.get("optimizer"), str) or isinstance(hparams.get("schedule"), str) or \
        bool(ONLINE_LEGACY_KEYS & set(hparams))


def _spec(class_path: str, **init_args: Any) -> dict[str, Any]:
    return {"class_path": class_path, "init_args": init_args}


def _neuron_into_arch_kwargs(hp: dict[str, Any], out: dict[str, Any]) -> None:
    arch_kwargs = dict(hp.get("arch_kwargs") or {})
    for key, default in NEURON_DEFAULTS.items():
        if key in hp and hp[key] != default:
            arch_kwargs[key] = hp[key]
    if arch_kwargs or "arch_kwargs" in hp:
        out["arch_kwargs"] = arch_kwargs or hp.get("arch_kwargs")


def _fp(hp: dict[str, Any], out: dict[str, Any]) -> None:
    out["fp_optimizer"] = _spec(f"{OPTIM}.FullPrecisionSGD", lr=hp.get("lr", 0.1), momentum=hp.get("momentum", 0.9),
                                weight_decay=hp.get("weight_decay", 0.0))
    if hp.get("lr_schedule", "cosine") == "constant":
        out["lr_scheduler"] = _spec("torch.optim.lr_scheduler.ConstantLR", factor=1.0, total_iters=0)
    else:
        out["lr_scheduler"] = _spec(f"{OPTIM}.CosineAnnealingToZero", epochs=hp.get("cosine_epochs"))


def _schedule(hp: dict[str, Any]) -> dict[str, Any]:
    name, interval = hp.get("schedule", "run_exp"), hp.get("schedule_interval", "epoch")
    if name == "step":
        return _spec(f"{OPTIM}.StepSchedule", every=hp.get("schedule_every", 50), factor=hp.get("schedule_factor", 0.1),
                     offset=hp.get("schedule_offset", 0), interval=interval)
    if name == "inv_sqrt":
        return _spec(f"{OPTIM}.InverseSqrtSchedule", scale=hp.get("schedule_scale", 1.0), interval=interval)
    if name == "run_step":
        return _spec(f"{OPTIM}.RunStepSchedule", fraction=hp.get("schedule_fraction", 0.125),
                     factor=hp.get("schedule_factor", 0.1))
    if name == "run_inv_sqrt":
        return _spec(f"{OPTIM}.RunInverseSqrtSchedule", final=hp.get("schedule_final", 1e-3))
    if name == "run_exp":
        return _spec(f"{OPTIM}.RunExponentialSchedule", final=hp.get("schedule_final", 1e-3))
    if name == "constant":
        return _spec(f"{OPTIM}.ConstantSchedule")
    raise ValueError(f"schedule must be one of ('constant', 'step', 'inv_sqrt', 'run_step', 'run_exp', "
                     f"'run_inv_sqrt'), got {name!r}")


def translate_online(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Flat ``OnlineClassifier`` hyper-parameters (``optimizer: tbso``, ...) as today's constructor arguments."""
    hp = dict(hparams)
    out = {k: v for k, v in hp.items() if k not in ONLINE_LEGACY_KEYS | {"optimizer", "schedule"}}
    optimizer = hp.get("optimizer", "tbso")
    common = dict(threshold=hp.get("threshold", 5e-7), fused=hp.get("fused_optimizer"),
                  momentum_dtype=hp.get("momentum_dtype", "float32"))
    if optimizer == "bso":
        out["optimizer"] = _spec(f"{OPTIM}.BSO", beta=hp.get("beta", 0.999),
                                 reset_momentum_on_flip=hp.get("reset_momentum_on_flip", False), **common)
    elif optimizer == "tbso":
        out["optimizer"] = _spec(f"{OPTIM}.TBSO", betas=list(hp.get("betas", (0.999, 0.99999))), eps=hp.get("eps", 1e-10),
                                 eps_placement=hp.get("eps_placement", "inside"), **common)
    else:
        raise ValueError(f"optimizer must be one of ('bso', 'tbso'), got {optimizer!r}")
    out["schedule"] = _schedule(hp)
    _fp(hp, out)
    # (checkpoints from before step_in_backward stepped after the backward: hp.get(..., False) as they loaded)
    out["loop"] = {"update_mode": hp.get("update_mode", "realtime"), "step_in_backward": hp.get("step_in_backward", False),
                   "saved_activation_dtype": hp.get("saved_activation_dtype", "float32"),
                   "mse_weight": hp.get("mse_weight", 0.05), "nonfinite": hp.get("nonfinite", "skip"),
                   "max_skipped_fraction": hp.get("max_skipped_fraction", 0.5)}
    _neuron_into_arch_kwargs(hp, out)
    return out


def translate_baseline(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Flat ``OTTTClassifier``/``BPTTLatentClassifier`` hyper-parameters as today's constructor arguments."""
    hp = dict(hparams)
    out = {k: v for k, v in hp.items() if k not in BASELINE_LEGACY_KEYS | {"latent_optimizer"}}
    _fp(hp, out)  # (named fp_optimizer as in OnlineClassifier: a switch of class keeps it, drops `optimizer`)
    if "latent_optimizer" in hp or "latent_lr" in hp:
        lr = hp.get("latent_lr", 1e-3)
        out["latent_optimizer"] = (_spec("torch.optim.SGD", lr=lr, momentum=hp.get("momentum", 0.9))
                                   if hp.get("latent_optimizer", "adam") == "sgd" else _spec("torch.optim.Adam", lr=lr))
    _neuron_into_arch_kwargs(hp, out)
    return out


#: The object each flat setting of the old ``OnlineClassifier`` belongs to now.
LEGACY_OWNER: dict[str, str] = {
    **dict.fromkeys(("threshold", "beta", "betas", "eps", "eps_placement", "reset_momentum_on_flip", "fused_optimizer",
                     "momentum_dtype"), "optimizer"),
    **dict.fromkeys(("schedule", "schedule_interval", "schedule_every", "schedule_factor", "schedule_scale",
                     "schedule_offset", "schedule_fraction", "schedule_final"), "schedule"),
    **dict.fromkeys(("lr", "momentum", "weight_decay"), "fp_optimizer"),
    **dict.fromkeys(("lr_schedule", "cosine_epochs"), "lr_scheduler"),
    **dict.fromkeys(("step_in_backward", "saved_activation_dtype", "mse_weight", "update_mode", "nonfinite",
                     "max_skipped_fraction"), "loop"),
    "decay": "arch_kwargs", "v_threshold": "arch_kwargs",
}


def translate_settings(settings: Mapping[str, Any], optimizer: str = "tbso") -> dict[str, Any]:
    """Only the given settings (a command's ``--set threshold=1e-6 schedule=constant``) in today's spelling: each
    flat setting of the old constructor becomes the object it belongs to (built with it and the class defaults
    otherwise; ``loop``: only the given fields), for the binary ``optimizer`` ``"tbso"`` or ``"bso"``. Settings
    already in today's spelling (``trace``, ``loop``, ``schedule: bso_lightning.optim.StepSchedule``, ...) stay as
    they are."""
    def old(key: str, value: Any) -> bool:
        return key in LEGACY_OWNER and not (key == "schedule" and (not isinstance(value, str) or "." in value))

    flat = {k: v for k, v in settings.items() if old(k, v)}
    out = {k: v for k, v in settings.items() if k not in flat}
    if not flat:
        return out
    translated = translate_online({"optimizer": optimizer, **flat, **({"arch_kwargs": settings["arch_kwargs"]}
                                                                     if "arch_kwargs" in settings else {})})
    for owner in dict.fromkeys(LEGACY_OWNER[k] for k in flat):
        if owner == "loop":
            out["loop"] = {**dict(out.get("loop") or {}),
                           **{k: translated["loop"][k] for k in flat if LEGACY_OWNER[k] == "loop"}}
        elif owner in translated:
            out[owner] = translated[owner]
    return out


def translate_legacy(hparams: Mapping[str, Any], baseline: bool = False) -> dict[str, Any]:
    """``hparams`` in today's spelling (unchanged when they already are)."""
    if not is_legacy(hparams, baseline):
        return dict(hparams)
    return translate_baseline(hparams) if baseline else translate_online(hparams)


__all__ = ["BASELINE_LEGACY_KEYS", "LEGACY_OWNER", "ONLINE_LEGACY_KEYS", "is_legacy", "translate_baseline",
           "translate_legacy", "translate_online", "translate_settings"]


def check_resumable(saved: Mapping[str, Any], path: Any) -> None:
    """For ``--ckpt_path``: refuse (one line naming the file) hyper-parameters whose nested ``class_path`` names no
    class loaded in this process (nothing is imported), and flat ones of an older version, saying how to convert."""
    from bso_lightning.checkpoints import CheckpointError
    from bso_lightning.tasks.specs import check_class_paths_loaded

    try:
        check_class_paths_loaded({k: v for k, v in saved.items() if k != "_class_path"})
    except ValueError as error:
        raise CheckpointError(path, str(error)) from None
    baseline = str(saved.get("_class_path", "")).rpartition(".")[2] in ("OTTTClassifier", "BPTTLatentClassifier")
    if is_legacy(saved, baseline):
        raise CheckpointError(path, "holds the flat hyper-parameters of a version before issue 22 (optimizer: "
                                    f"{saved.get('optimizer')!r}, ...); convert it once with `python -m "
                                    f"bso_lightning.tasks.legacy {path} NEW.ckpt` and resume from NEW.ckpt")


def convert_checkpoint(source: Any, target: Any) -> None:
    """Write ``source`` (a checkpoint of an older version) to ``target`` with its hyper-parameters translated."""
    import torch

    from bso_lightning.checkpoints import read_checkpoint

    checkpoint = read_checkpoint(source)
    saved = dict(checkpoint.get("hyper_parameters") or {})
    baseline = str(saved.get("_class_path", "")).rpartition(".")[2] in ("OTTTClassifier", "BPTTLatentClassifier")
    extras = {k: saved[k] for k in ("_class_path", "_instantiator") if k in saved}
    checkpoint["hyper_parameters"] = {**translate_legacy(saved, baseline), **extras}
    torch.save(checkpoint, target)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m bso_lightning.tasks.legacy OLD.ckpt NEW.ckpt")
    convert_checkpoint(sys.argv[1], sys.argv[2])
