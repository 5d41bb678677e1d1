"""The ``bso-lightning`` command: LightningCLI (fit, validate, test, predict) over any task and DataModule.

With no arguments, ``bso-lightning fit`` trains the small BSNN with T-BSO on the embedded digits task
(the same settings as ``configs/quickstart.yaml``) and tests the trained model.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from bso_lightning.callbacks.checkpoint_on_signal import CheckpointOnInterrupt
from bso_lightning.callbacks.flip_rate import FlipRateCallback
from bso_lightning.checkpoint_io import AtomicCheckpointIO
from bso_lightning.checkpoints import CheckpointError, check_ckpt_path, check_model_bounds, read_checkpoint
from bso_lightning.tasks.base import architecture_view
from bso_lightning.tasks.legacy import check_resumable
from bso_lightning.errors import UserDataError

log = logging.getLogger(__name__)

#: Errors ``main`` reports as one line (the full traceback with ``BSO_DEBUG=1``): bad arguments, files and data,
#: and the environment's (``OSError``: a full disk, a folder that cannot be written, no network).
USER_ERRORS = (ValueError, OSError, FloatingPointError, UserDataError, MisconfigurationException)
#: Model arguments that a resumed run cannot change (LightningCLI rebuilds the model from the checkpoint's; T fixes
#: the per-time-step optimizer state and BatchNorm statistics): ``arch_kwargs`` without the neuron's ``decay`` and
#: ``v_threshold``, and of ``optimizer`` only its class (BSO or T-BSO: the layout of its state), not γ or β.
RESUME_FIXED_KEYS = ("arch", "arch_kwargs", "optimizer", "time_steps")

#: The quick start (README command 1, configs/quickstart.yaml): 8 epochs of a width-16 small_cnn, measured to
#: reach >= 98% test accuracy in under 60 s on one core (benchmarks/quickstart_time.py).
QUICKSTART_TRAINER = {"max_epochs": 8, "log_every_n_steps": 10}


#: Most values a YAML document (a ``--config`` file, a value on the command line) may expand to, counting every
#: alias as the copy jsonargparse makes of it: a "billion laughs" document of a few lines expands to 10**9 and used
#: to exhaust memory. The configs in ``configs/`` hold a few hundred.
MAX_CONFIG_VALUES = 1_000_000
BOUNDED_YAML_MODE = "bso_yaml"


def expanded_size(value: Any, limit: int = MAX_CONFIG_VALUES) -> int:
    """Values in ``value`` with every shared (aliased) list or dict counted as often as it is referenced, without
    expanding anything (memoised per object); stops counting past ``limit``. A list or dict that contains itself
    (a recursive alias) counts as ``limit + 1``."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(item: Any) -> int:
        if not isinstance(item, (list, dict)):
            return 1
        key = id(item)
        if key in sizes:
            return sizes[key]
        if key in active:
            return limit + 1
        active.add(key)
        children = item.values() if isinstance(item, dict) else item
        total = 1
        for child in children:
            total += size(child)
            if total > limit:
                break
        active.discard(key)
        sizes[key] = min(total, limit + 1)
        return sizes[key]

    return size(value)


def bounded_yaml_load(stream: str, path: Optional[str] = None) -> Any:
    """jsonargparse's YAML loader, refusing a document that expands to more than :data:`MAX_CONFIG_VALUES` values
    (aliases repeated, or an alias inside itself) with a ``ValueError`` naming the file."""
    from jsonargparse._loaders_dumpers import yaml_load

    value = yaml_load(stream)
    if expanded_size(value) > MAX_CONFIG_VALUES:
        where = f"config {path}" if path else "a YAML value (on the command line, or in a file an option names)"
        raise ValueError(f"{where}: expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases repeated "
                         "inside one another, or an alias inside itself); refused before it is expanded")
    return value


def _register_bounded_yaml() -> None:
    import yaml
    from jsonargparse import set_loader

    set_loader(BOUNDED_YAML_MODE, bounded_yaml_load, exceptions=(yaml.YAMLError,))


class BSOArgumentParser(LightningArgumentParser):
    """jsonargparse's parser whose error output is the error, not the ~40-line usage of every option first, and
    whose YAML loader is bounded (:func:`bounded_yaml_load`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _register_bounded_yaml()
        kwargs.setdefault("parser_mode", BOUNDED_YAML_MODE)
        super().__init__(*args, **kwargs)

    def print_usage(self, file: Any = None) -> None:
        (file or sys.stdout).write(f"usage: {self.prog.replace(' [options]', '')} [options]\n")

    def parse_args(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        """A bare ``--print_config`` prints the compact config (:func:`compact_config`); ``--print_config=FLAGS``
        prints jsonargparse's."""
        global _COMPACT_PRINT
        if not hasattr(self, "parent_parser"):
            args = sys.argv[1:] if args is None else list(args)
            _COMPACT_PRINT = "--print_config" in args
            args = ["--print_config=skip_unset" if a == "--print_config" else a for a in args]
        return super().parse_args(args, *rest, **kwargs)

    def dump(self, cfg: Any, *args: Any, **kwargs: Any) -> str:
        text = super().dump(cfg, *args, **kwargs)
        return compact_config(text) if _COMPACT_PRINT and kwargs.get("skip_unset") else text


#: Set while a bare ``--print_config`` is parsed (the compact config is printed).
_COMPACT_PRINT = False


def compact_config(text: str) -> str:
    """The config of a bare ``--print_config``: no unset (null) entries, and of the trainer only the arguments that
    differ from ``lightning.pytorch.Trainer``'s own defaults (Lightning documents the other ~40). The quick start's
    fits in 60 lines; ``--print_config=skip_unset`` prints every trainer argument."""
    import inspect

    import yaml
    from lightning.pytorch import Trainer

    comments = [line for line in text.splitlines() if line.startswith("#")]
    config = yaml.safe_load(text)
    if isinstance(config, dict) and isinstance(config.get("trainer"), dict):
        defaults = {k: p.default for k, p in inspect.signature(Trainer.__init__).parameters.items()}
        config["trainer"] = {k: v for k, v in config["trainer"].items() if k not in defaults or v != defaults[k]}
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return "\n".join([*comments, body.rstrip("\n")]) + "\n"


class BSOLightningCLI(LightningCLI):
    """LightningCLI with the DataModule's ``num_classes``/``in_channels`` linked into the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="After `fit`, evaluate the final model on the DataModule's test split.")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_channels", "model.init_args.in_channels", apply_on="instantiate")
        parser.set_defaults({
            # the classifier's defaults: small_cnn (width 16), γ and 1 − β1 decayed log-linearly to 1e-3× over
            # the run (docs/hyperparameters.md): the quick start in under a minute of CPU time
            "model": {"class_path": "bso_lightning.tasks.OnlineClassifier"},
            "data": {"class_path": "datamodules.DigitsDataModule"},
        })

    def after_fit(self) -> None:
        if self.config_dump_value("test_after_fit") and not self.trainer.interrupted:
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=True)

    def config_dump_value(self, key: str):
        return self.config[self.subcommand].get(key) if self.subcommand else self.config.get(key)

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """Parse, then check ``--ckpt_path``: a missing, empty or truncated file fails here, naming it, before
        Lightning reads the checkpoint's hyper-parameters and before anything is written."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        self._given_model = given_model_arguments(parser, args, subcommand)
        config = self.config[subcommand]
        if "weights_only" in config and config["weights_only"] is None:
            config["weights_only"] = True  # explicit: never a full unpickle unless `--weights_only false`
        if config.get("ckpt_path") == "last":
            config["ckpt_path"] = str(resolve_last_checkpoint(config))
        if config.get("ckpt_path"):
            check_ckpt_path(config["ckpt_path"], trusted=config.get("weights_only") is False)

    def _parse_ckpt_path(self) -> None:
        """Lightning replaces the model arguments by the checkpoint's; refuse an explicitly given architecture
        argument (:data:`RESUME_FIXED_KEYS`) that differs from the checkpoint's instead of ignoring it."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else {}
        path = config.get("ckpt_path") if subcommand else None
        if path and Path(path).is_file():
            if config.get("weights_only") is False:
                log.warning("--weights_only false: the hyper-parameters of %s are not read (Lightning reads them "
                            "with weights_only=True); the model is built from the arguments given", path)
                return
            saved = read_checkpoint(path).get("hyper_parameters")
            if isinstance(saved, Mapping):
                check_saved_class_path(saved, path)
                check_resumable(saved, path)  # nested class_paths loaded (nothing imported); older versions: convert
                check_model_bounds(saved, path)  # before LightningCLI builds the model the file describes
                check_explicit_model_arguments(getattr(self, "_given_model", None), saved, path)
        super()._parse_ckpt_path()
        if path and Path(path).is_file():
            self._resumed_pretrained = _drop_pretrained(self.config[subcommand]["model"], path)

    def instantiate_classes(self) -> None:
        """Build the model (and the rest); a resumed fine-tune keeps ``pretrained`` in its hyper-parameters, but
        the file is not read (:func:`_drop_pretrained`)."""
        super().instantiate_classes()
        pretrained = getattr(self, "_resumed_pretrained", None)
        if pretrained is not None and "pretrained" in getattr(self.model, "hparams", {}):
            self.model.hparams["pretrained"] = pretrained  # provenance kept in the checkpoints of the resumed run

    def instantiate_trainer(self, **kwargs: Any):
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # (not a CheckpointIO the user chose)
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()  # a full disk leaves no truncated checkpoint
        claim_log_versions(trainer)
        if self.subcommand in (None, "fit"):
            claim_checkpoint_folder(trainer)
        if not any(isinstance(callback, FlipRateCallback) for callback in trainer.callbacks):
            # every run's summary gets the end-of-training flip rate (flips/final); idle for the baselines
            trainer.callbacks.append(FlipRateCallback(require_binary_optimizer=False))
        return trainer


def given_model_arguments(parser: LightningArgumentParser, args: Any, subcommand: str) -> Any:
    """The ``model`` part of what the user gave (command line, ``--config`` files), without any default: parsed
    again with ``defaults=False``, so that a value equal to the class default is still seen as given."""
    try:
        if isinstance(args, Mapping):
            given = parser.parse_object(dict(args), defaults=False, _skip_validation=True)
        else:
            given = parser.parse_args(sys.argv[1:] if args is None else list(args), defaults=False,
                                      _skip_validation=True)
    except (Exception, SystemExit) as exc:  # (it parsed with defaults; nothing to check without them)
        log.debug("arguments not parsed without defaults (%s); resume arguments not checked", exc)
        return None
    return given.get(f"{subcommand}.model")


def _as_dict(value: Any) -> Any:
    """A parsed ``class_path``/``init_args`` Namespace as a plain dict (other values as they are)."""
    return value.as_dict() if hasattr(value, "as_dict") else value


def check_saved_class_path(saved: Mapping[str, Any], path: Any) -> None:
    """Refuse a checkpoint whose ``_class_path`` (the model class LightningCLI rebuilds) is not a LightningModule
    already loaded in this process — without importing anything: resolving the name would import its module,
    which runs that module's code (the file picks what to import)."""
    import lightning as L

    class_path = saved.get("_class_path")
    if class_path is None:
        return
    module, _, name = class_path.rpartition(".") if isinstance(class_path, str) else ("", "", "")
    found = getattr(sys.modules.get(module), name, None) if module else None
    if not (isinstance(found, type) and issubclass(found, L.LightningModule)):
        raise CheckpointError(path, f"its hyper-parameters name the model class {class_path!r}, which is not a "
                                    "LightningModule loaded in this process; nothing was imported. If you trust the "
                                    "file and its class, name the class yourself (--model <class_path>).")


def check_explicit_model_arguments(given_model: Any, saved: Mapping[str, Any], path: Any) -> None:
    """Raise :class:`CheckpointError` if ``given_model`` (the ``model`` the user gave, without defaults:
    :func:`given_model_arguments`) sets a :data:`RESUME_FIXED_KEYS` argument to a value other than the checkpoint's
    hyper-parameters ``saved`` — also a value equal to the class default. An argument not given is taken from the
    checkpoint (LightningCLI)."""
    init_args = dict(getattr(given_model, "init_args", None) or {})

    def plain(key: str, value: Any) -> Any:
        if key in ("arch_kwargs", "optimizer"):  # (the shapes; the optimizer's kind, not its hyper-parameters)
            return architecture_view({key: _as_dict(value)}).get(key)
        return value

    conflicts = [
        f"--model.init_args.{key}={plain(key, init_args[key])!r} (the checkpoint has {plain(key, saved[key])!r})"
        for key in RESUME_FIXED_KEYS
        if key in init_args and key in saved and plain(key, init_args[key]) is not None
        and plain(key, init_args[key]) != plain(key, saved[key])
    ]
    if conflicts:
        raise CheckpointError(path, f"is resumed with its own architecture and time steps, but {'; '.join(conflicts)} was given. "
                                    "Drop that argument to resume, or start a new run without --ckpt_path "
                                    "(--model.init_args.pretrained starts from its weights, same architecture).")


def claim_log_versions(trainer: Any) -> None:
    """Give every logger without an explicit version the next free ``version_N`` folder, created at once with
    ``os.mkdir`` (atomic: it fails if another run took that number first), so that two runs started in one
    folder never share a version folder. Only the main process claims (DDP processes get its folder)."""
    if rank_zero_only.rank != 0:
        return
    for logger in trainer.loggers:
        if getattr(logger, "_version", 0) is not None or not hasattr(logger, "_get_next_version"):
            continue  # an explicit version, or a logger without version folders
        root = str(getattr(logger, "root_dir", ""))
        if not root or "://" in root:
            continue
        os.makedirs(root, exist_ok=True)
        version = logger._get_next_version()
        while True:
            try:
                os.mkdir(os.path.join(root, f"version_{version}"))
                break
            except FileExistsError:
                version += 1
        logger._version = version


def _drop_pretrained(model_config: Any, path: Any) -> Optional[str]:
    """On resume the checkpoint's weights win: set ``init_args.pretrained`` (the fine-tune's starting weights, which
    LightningCLI copies from the checkpoint's hyper-parameters) to None so that the file is not read — it may be
    gone. Returns the value that was dropped."""
    for holder in (getattr(model_config, "init_args", None), getattr(model_config, "dict_kwargs", None)):
        pretrained = holder.get("pretrained") if holder is not None else None
        if pretrained:
            holder["pretrained"] = None
            log.info("resuming from %s: its weights are used, pretrained=%s is not read", path, pretrained)
            return pretrained
    return None


#: Where ``--ckpt_path last`` looks, relative to the run's root folder (``--trainer.default_root_dir``, a logger's
#: ``save_dir``): the folders this CLI's runs write checkpoints to, with a logger and without.
LAST_CHECKPOINT_PATTERNS = ("*/version_*/checkpoints/*.ckpt", "checkpoints/version_*/*.ckpt", "checkpoints/*.ckpt")


def _logger_save_dirs(logger_config: Any) -> list[str]:
    configs = logger_config if isinstance(logger_config, list) else [logger_config]
    save_dirs = []
    for config in configs:
        init_args = getattr(config, "init_args", None) or (config.get("init_args") if isinstance(config, dict) else None)
        save_dir = init_args.get("save_dir") if init_args is not None else None
        if save_dir and "://" not in str(save_dir):
            save_dirs.append(str(save_dir))
    return save_dirs


def resolve_last_checkpoint(config: Mapping[str, Any]) -> Path:
    """The file ``--ckpt_path last`` means: the newest ``*.ckpt`` (``last.ckpt``, ``interrupted.ckpt``, epoch
    checkpoints) of the run's root folder (:data:`LAST_CHECKPOINT_PATTERNS`). Every run claims a new
    ``version_N`` folder, so Lightning's own ``"last"`` (the current run's folder) never finds one and trains from
    scratch. Raises ``FileNotFoundError`` saying where it looked when there is none."""
    trainer = config.get("trainer") or {}
    roots = [str(trainer.get("default_root_dir") or os.getcwd()), *_logger_save_dirs(trainer.get("logger"))]
    roots = list(dict.fromkeys(roots))
    searched = [os.path.join(root, pattern) for root in roots for pattern in LAST_CHECKPOINT_PATTERNS]
    found = [p for root in roots for pattern in LAST_CHECKPOINT_PATTERNS for p in Path(root).glob(pattern) if p.is_file()]
    if not found:
        raise FileNotFoundError(f"--ckpt_path last: no checkpoint (*.ckpt) in {', '.join(searched)}; give the "
                                "checkpoint's path, or the run's --trainer.default_root_dir")
    newest = max(found, key=lambda p: (p.stat().st_mtime_ns, str(p)))
    log.warning("--ckpt_path last: resuming from %s (the newest of %d checkpoints found)", newest, len(found))
    return newest


def claim_checkpoint_folder(trainer: Any) -> None:
    """Without a logger, Lightning writes every run's checkpoints to ``<default_root_dir>/checkpoints`` under the
    same names (``interrupted.ckpt``, ``last.ckpt``, ``epoch=...``; LightningCLI's ``config.yaml`` made a second run
    fail): give this run its own ``checkpoints/version_N`` folder (claimed with ``os.mkdir``, as
    :func:`claim_log_versions` does) for every ``ModelCheckpoint`` and :class:`CheckpointOnInterrupt` without an
    explicit ``dirpath``, and write the run's ``config.yaml`` there."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    if trainer.loggers or rank_zero_only.rank != 0:
        return
    callbacks = [c for c in trainer.callbacks
                 if isinstance(c, (ModelCheckpoint, CheckpointOnInterrupt)) and c.dirpath is None]
    if not callbacks:
        return
    root = os.path.join(str(trainer.default_root_dir), "checkpoints")
    os.makedirs(root, exist_ok=True)
    version = 0
    while True:
        folder = os.path.join(root, f"version_{version}")
        try:
            os.mkdir(folder)
            break
        except FileExistsError:
            version += 1
    for callback in callbacks:
        callback.dirpath = folder
    for callback in trainer.callbacks:  # the run's config.yaml too (it went to <default_root_dir>/config.yaml, so a
        if isinstance(callback, SaveConfigCallback) and callback.save_to_log_dir:  # second run failed on it)
            callback.parser.save(callback.config, os.path.join(folder, callback.config_filename), skip_none=False,
                                 overwrite=callback.overwrite, multifile=callback.multifile)
            callback.save_to_log_dir = False


def build_cli(args: Optional[list[str]] = None, run: bool = True) -> BSOLightningCLI:
    """Parse ``args`` (default: the command line) and, with ``run``, execute the subcommand."""
    return BSOLightningCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={**QUICKSTART_TRAINER, "callbacks": [CheckpointOnInterrupt()]},
        seed_everything_default=0,
        args=args,
        auto_configure_optimizers=False,
        parser_class=BSOArgumentParser,
        run=run,
    )


def root_cause(error: BaseException) -> BaseException:
    """The exception of ``error``'s chain to report (jsonargparse wraps the real one): the innermost one raised by
    this library or ``datamodules`` (it names the file or argument: a ``DataFileError`` over the ``ValueError`` it
    was raised from), else the innermost :data:`USER_ERRORS` one."""
    found, ours, seen = error, None, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, USER_ERRORS):
            found = error
            if type(error).__module__.split(".")[0] in ("bso_lightning", "datamodules"):
                ours = error
        error = error.__cause__ or error.__context__
    return ours if ours is not None else found


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of the ``bso-lightning`` console script: an argument, file or data error is printed as one
    line naming the culprit (exit status 1); ``BSO_DEBUG=1`` shows the full traceback instead."""
    try:
        build_cli(args)
    except USER_ERRORS as error:
        if os.environ.get("BSO_DEBUG", "") not in ("", "0"):
            raise
        cause = root_cause(error)
        message = " ".join(str(cause).split())
        print(f"bso-lightning: error: {message}  [{type(cause).__name__}; BSO_DEBUG=1 shows the traceback]",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
