"""The base of every classifier in ``bso_lightning.tasks``: a model presented each sample for T time steps.

:class:`TimeSteppedClassifier` holds what :class:`~bso_lightning.tasks.OnlineClassifier` and the baselines
(:mod:`bso_lightning.tasks.baselines`) share: the prediction (mean output over T), evaluation (loss Eq. 8 and
accuracy), BatchNorm re-estimation before evaluation, the checks of the shared hyper-parameters, the stepping of
the schedules (the per-epoch ones with the epoch's last batch) and the checkpoint checks (hyper-parameters of older
versions translated, :mod:`bso_lightning.tasks.legacy`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from spikingjelly.activation_based import functional
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from bso_lightning.checkpoints import (
    CheckpointError, check_compatible, check_loaded_state, check_model_bounds, check_same_time_steps,
    check_state_dict_fits, read_checkpoint,
)
from bso_lightning.models.spec import BATCHNORM_STATISTICS
from bso_lightning.nn.batchnorm import recalibrate_batchnorm
from bso_lightning.tasks.batch import check_time_steps, input_at_time_step
from bso_lightning.tasks.faults import EvaluationInputs
from bso_lightning.tasks.gap import DEFAULT_GAP_MARGIN, AccuracyGapMonitor, run_long_enough_to_warn
from bso_lightning.tasks.legacy import NEURON_DEFAULTS, translate_legacy
from bso_lightning.tasks.loop import check_choice
from bso_lightning.tasks.loss import online_loss
from bso_lightning.tasks.running_bn import RunningBatchNormReading, batchnorm_state, load_batchnorm_state
from bso_lightning.tasks.state_guard import StateGuard, guarded_tensors

log = logging.getLogger(__name__)

BN_RECALIBRATION_SEED = 1234
#: Checkpoint entry of :meth:`TimeSteppedClassifier._checkpoint_extras` (named after the first class that
#: wrote it; kept so that older checkpoints resume).
CHECKPOINT_EXTRAS_KEY = "online_classifier"


def architecture_view(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """What of ``hparams`` fixes the weights' shapes and the optimizer state's layout, the same for every version:
    ``arch``, ``arch_kwargs`` (without the neuron's ``decay``/``v_threshold``), ``num_classes``, ``in_channels`` and
    the binary optimizer's kind (``"tbso"``, ``"bso"``; checkpoints before issue 22 spell it so)."""
    from bso_lightning.optim.base import BinaryOptimizer
    from bso_lightning.tasks.specs import loaded_class

    view = {k: hparams[k] for k in ("arch", "num_classes", "in_channels") if k in hparams}
    if "arch_kwargs" in hparams:
        view["arch_kwargs"] = {k: v for k, v in dict(hparams["arch_kwargs"] or {}).items() if k not in NEURON_DEFAULTS}
    optimizer = hparams.get("optimizer")
    if isinstance(optimizer, str):
        view["optimizer"] = optimizer
    elif isinstance(optimizer, Mapping) and isinstance(optimizer.get("class_path"), str):
        class_path = optimizer["class_path"]
        try:
            binary = issubclass(loaded_class(class_path, "optimizer", object), BinaryOptimizer)
        except ValueError:
            binary = True  # (not loaded: compared by name)
        if binary:
            view["optimizer"] = {"TBSO": "tbso", "BSO": "bso"}.get(class_path.rpartition(".")[2], class_path)
    return view


class TimeSteppedClassifier(L.LightningModule):
    """Base LightningModule (manual optimization) of a classifier run for ``time_steps`` steps per sample.

    A subclass keeps its own explicit ``__init__`` (LightningCLI reads it), calls ``save_hyperparameters()``
    and :meth:`_check_shared_hyperparameters`, builds ``self.model`` and calls :meth:`_make_metrics`. The
    methods here read the hyper-parameters ``time_steps`` and ``bn_recalibration_batches``, and :attr:`mse_weight`.
    """

    model: torch.nn.Module
    #: Which flat hyper-parameters of the versions before issue 22 this class translates (tasks/legacy.py).
    legacy_baseline = False

    @property
    def mse_weight(self) -> float:
        """α of the loss (Eq. 8)."""
        return self.hparams.mse_weight

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    # ----------------------------------------------------------------- construction
    def _check_shared_hyperparameters(self) -> None:
        """Check time_steps, mse_weight, bn_recalibration_batches and batchnorm_statistics (the neuron's decay and
        v_threshold are checked where the model is built, the optimizers' arguments where they are built)."""
        hp = self.hparams
        if not isinstance(hp.time_steps, int) or hp.time_steps < 1:
            raise ValueError(f"time_steps must be an integer >= 1, got {hp.time_steps!r}")
        if not 0.0 <= self.mse_weight <= 1.0:
            raise ValueError(f"mse_weight must lie in [0, 1], got {self.mse_weight}")
        if hp.bn_recalibration_batches < 0:
            raise ValueError(f"bn_recalibration_batches must be >= 0, got {hp.bn_recalibration_batches}")
        check_choice("batchnorm_statistics", hp.get("batchnorm_statistics", "pooled"), BATCHNORM_STATISTICS)

    def _inject(self, **given: tuple[Any, type]) -> None:
        """Keep a builder for each injected argument (``name=(value, base class)``) in ``self._factories`` and its
        plain description in the hyper-parameters (:mod:`bso_lightning.tasks.specs`)."""
        from bso_lightning.tasks.specs import factory_of, spec_of

        self._factories = getattr(self, "_factories", {})
        for name, (value, base) in given.items():
            self._factories[name] = factory_of(value, name, base)
            if not isinstance(self.hparams[name], Mapping):  # (LightningCLI gives the parsed config: plain already)
                self.hparams[name] = spec_of(value, name)

    def _build(self, name: str, target: Any, base: type) -> Any:
        """``self._factories[name](target)``, checked: an instance of ``base`` whose numeric settings (``lr``,
        ``momentum``, ...) are finite numbers >= 0 (NaN/Inf refused here, not after a step)."""
        built = self._factories[name](target)
        if not isinstance(built, base):
            raise ValueError(f"{name} must build a {base.__name__}, built {type(built).__name__}")
        for group in getattr(built, "param_groups", []) if isinstance(built, torch.optim.Optimizer) else []:
            for key in ("lr", "momentum", "weight_decay"):
                value = group.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and not 0 <= value < float("inf"):
                    raise ValueError(f"{name}.{key} must be a finite number >= 0, got {value!r}")
        return built

    def _make_metrics(self, num_classes: int) -> None:
        self.train_acc = MulticlassAccuracy(num_classes)
        self.val_acc = MulticlassAccuracy(num_classes)
        self.test_acc = MulticlassAccuracy(num_classes)
        self.val_acc_running_bn = MulticlassAccuracy(num_classes)  # the authors' evaluation (running BN statistics)
        self.test_acc_running_bn = MulticlassAccuracy(num_classes)

    # ----------------------------------------------------------------- time loop
    def forward(self, x: Tensor) -> Tensor:
        """Mean output over the T time steps (the prediction); neuron state is reset first."""
        check_time_steps(x, self.hparams.time_steps)
        functional.reset_net(self.model)
        total = None
        for t in range(self.hparams.time_steps):
            out = self.model(input_at_time_step(x, t))
            total = out if total is None else total + out
        functional.reset_net(self.model)
        return total / self.hparams.time_steps

    def _log_train(self, output_sum: Tensor, loss_sum: Tensor, y: Tensor) -> None:
        self.train_acc(output_sum / self.hparams.time_steps, y)
        self.log("train/loss", loss_sum, prog_bar=True, batch_size=len(y))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))

    def _optimizer_list(self) -> list:
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]

    def _scheduler_list(self) -> list:
        schedulers = self.lr_schedulers()
        return schedulers if isinstance(schedulers, list) else [] if schedulers is None else [schedulers]

    # ----------------------------------------------------------------- schedules
    def _schedule_intervals(self) -> tuple[str, ...]:
        """The unit of each scheduler ``configure_optimizers`` returns, in order: ``"epoch"`` or ``"step"``
        (one per training batch). Here every one is per epoch."""
        return ("epoch",) * len(self._scheduler_list())

    def _advance_schedules(self) -> None:
        """Step the schedules after a batch: the per-batch ones always, the per-epoch ones after the epoch's
        last batch.

        (Not in ``on_train_epoch_end``: like Lightning's own epoch-interval schedulers, they must have
        stepped before a checkpoint saved at the end of the epoch's last batch, since a run resumed from
        that checkpoint starts the next epoch without running the epoch-end hooks.)
        """
        last_batch = self.trainer.is_last_batch  # set before training_step, from the data fetcher
        for scheduler, interval in zip(self._scheduler_list(), self._schedule_intervals(), strict=True):
            if interval == "step" or last_batch:
                scheduler.step()

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also save :meth:`_checkpoint_extras` (the epoch's running training accuracy, ...): exact mid-epoch resume.
        Refuses to save a non-finite state (:mod:`bso_lightning.tasks.state_guard`)."""
        self._state_guard().check(f"saving a checkpoint at {self._where()}", saving=True)
        checkpoint[CHECKPOINT_EXTRAS_KEY] = self._checkpoint_extras()

    def _state_guard(self) -> StateGuard:
        return StateGuard(guarded_tensors(self.model, self._exactly_binary_weights(), prefix="model."))

    def _exactly_binary_weights(self) -> list[Tensor]:
        """Weights that are ±1 by construction (not scanned for NaN/Inf); the online classifier's binary ones."""
        return []

    def _where(self) -> str:
        if self._trainer is None:
            return "no trainer"
        return f"epoch {self.current_epoch} (global_step {self.trainer.global_step})"

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Stop the run if the trained state became NaN/Inf (one fused check and one host sync per batch)."""
        self._state_guard().check(f"after batch {batch_idx} of epoch {self.current_epoch} "
                                  f"(global_step {self.trainer.global_step})", self.trainer.strategy)

    def _checkpoint_extras(self) -> dict[str, Any]:
        return {"epoch": self.current_epoch,
                "train_acc": {k: v.detach().clone() for k, v in self.train_acc.metric_state.items()
                              if isinstance(v, Tensor)}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another architecture (naming the file); restore what ``on_save_checkpoint`` added."""
        saved = checkpoint.get("hyper_parameters")
        path = (self._trainer.ckpt_path if self._trainer is not None else None) or "<checkpoint>"
        if isinstance(saved, Mapping):
            check_compatible(architecture_view(saved), architecture_view(self.hparams), path)
            if self._trainer is not None and self.trainer.state.fn == "fit":  # (evaluating at another T is fine)
                check_same_time_steps(saved, self.hparams, path)
        state = checkpoint.get("state_dict", {})
        if self.strict_loading:
            check_state_dict_fits(state, self.state_dict(), path)
        check_loaded_state(state, path)
        extras = checkpoint.get(CHECKPOINT_EXTRAS_KEY, {})
        self._resumed_train_acc = (extras.get("epoch"), extras.get("train_acc", {}))
        self._restore_checkpoint_extras(extras)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any):  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``, after checking a local file's hyper-parameters (with the ``kwargs``
        that override them) against the size bounds (:func:`~bso_lightning.checkpoints.check_model_bounds`):
        a file cannot make it build a model of any size."""
        import inspect
        import os

        from bso_lightning.tasks.specs import check_class_paths_loaded

        if isinstance(checkpoint_path, (str, os.PathLike)) and os.path.isfile(checkpoint_path):
            saved = read_checkpoint(checkpoint_path).get("hyper_parameters")
            if isinstance(saved, Mapping) and "arch" in saved:
                check_model_bounds({**saved, **{k: v for k, v in kwargs.items() if k in saved}}, checkpoint_path)
                try:
                    check_class_paths_loaded(saved)  # (before anything could import the module a file names)
                except ValueError as error:
                    raise CheckpointError(checkpoint_path, str(error)) from None
                # flat hyper-parameters of older versions in today's spelling; built by this class itself, never by
                # an instantiator the file names (LightningCLI's would import every class_path in it)
                names = set(inspect.signature(cls.__init__).parameters) - {"self"}
                translated = translate_legacy(saved, baseline=cls.legacy_baseline)
                kwargs = {**{k: v for k, v in translated.items() if k in names}, **kwargs, "_instantiator": None}
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def _restore_checkpoint_extras(self, extras: Mapping[str, Any]) -> None:
        """Subclasses restore their own entries of :meth:`_checkpoint_extras` here."""

    def on_train_start(self) -> None:
        """Resuming mid-epoch: continue the epoch's training accuracy from the checkpoint."""
        epoch, state = getattr(self, "_resumed_train_acc", (None, {}))
        self._resumed_train_acc = (None, {})
        if epoch == self.current_epoch:  # (not when the saved epoch had ended)
            for name, value in state.items():
                setattr(self.train_acc, name, value.to(self.device))

    # ----------------------------------------------------------------- evaluation
    def _evaluate(self, batch, metric: MulticlassAccuracy, stage: str) -> Tensor:
        x, y = batch
        self._evaluation_inputs().update(x)  # NaN/Inf inputs counted on the device, reported once per epoch
        output = self(x)
        loss = online_loss(output, y, 1, self.mse_weight)
        metric(output, y)
        self.log(f"{stage}/loss", loss, batch_size=len(y), sync_dist=True)  # mean over DDP processes at epoch end
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        reading = getattr(self, "_running_bn_reading", None)
        if reading is not None:  # {stage}/acc_running_bn: BatchNorm running statistics (tasks/running_bn.py)
            running_metric = getattr(self, f"{stage}_acc_running_bn")
            running_metric(reading.output(self.model, self, x, output), y)
            self.log(f"{stage}/acc_running_bn", running_metric, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def _evaluation_inputs(self) -> EvaluationInputs:
        if getattr(self, "_eval_inputs", None) is None:
            self._eval_inputs = EvaluationInputs()
        return self._eval_inputs

    def on_validation_end(self) -> None:
        """Report the NaN/Inf inputs of this validation (a warning; an error if every sample was non-finite)."""
        self._evaluation_inputs().report("val", self.current_epoch)

    def on_test_end(self) -> None:
        self._evaluation_inputs().report("test", self.current_epoch)

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._evaluate(batch, self.val_acc, "val")

    def test_step(self, batch, batch_idx: int) -> Tensor:
        return self._evaluate(batch, self.test_acc, "test")

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).argmax(-1)

    def on_validation_epoch_start(self) -> None:
        self._recalibrate_keeping_running_stats()

    #: ``running train accuracy − val/acc`` above this (a fraction) warns once per run (tasks/gap.py).
    accuracy_gap_margin: float = DEFAULT_GAP_MARGIN

    def on_validation_epoch_end(self) -> None:
        """Give training its running BatchNorm statistics back (validation only reads them, so a run resumed from a
        checkpoint taken before a validation continues exactly), then log the running training accuracy of the
        epoch so far next to ``val/acc`` (the current weights in eval mode): ``val/train_acc_running`` and
        ``val/acc_gap`` (their difference); warn once when the gap exceeds :attr:`accuracy_gap_margin`
        (:mod:`bso_lightning.tasks.gap`). One host sync per validation."""
        reading = getattr(self, "_running_bn_reading", None)
        if reading is not None and reading.recalibrated is not None and self._trainer is not None \
                and self.trainer.state.fn == "fit":
            load_batchnorm_state(self.model, reading.running)
        if self._trainer is None or self.trainer.sanity_checking or not self.train_acc.update_called \
                or not self.val_acc.update_called:
            return
        running, held_out = float(self.train_acc.compute()), float(self.val_acc.compute())
        if getattr(self, "_gap_monitor", None) is None:
            self._gap_monitor = AccuracyGapMonitor(self.accuracy_gap_margin)
        gap = self._gap_monitor.check(running, held_out, f"validation at epoch {self.current_epoch} "
                                                         f"(global_step {self.trainer.global_step})",
                                      warn=run_long_enough_to_warn(self.trainer))
        self.log("val/train_acc_running", running, sync_dist=False)
        self.log("val/acc_gap", gap, sync_dist=False)

    def on_test_epoch_start(self) -> None:
        self._recalibrate_keeping_running_stats()

    def _recalibrate_keeping_running_stats(self) -> None:
        """Copy the running BatchNorm statistics, then re-estimate: ``{stage}/acc`` reads the re-estimated ones,
        ``{stage}/acc_running_bn`` the copy (one more forward per batch; none without re-estimation). During
        ``fit`` the running statistics are put back after each validation: training never sees evaluation's
        statistics, so checkpoints hold training's own and a resumed run continues exactly. After ``test`` and
        ``predict`` the model keeps the re-estimated ones (``export_packed(task)`` after ``trainer.test``)."""
        running = batchnorm_state(self.model)
        used = self.recalibrate_batchnorm()
        self._running_bn_reading = RunningBatchNormReading(running, batchnorm_state(self.model) if used else None)

    def on_predict_epoch_start(self) -> None:
        self.recalibrate_batchnorm()

    def recalibrate_batchnorm(self) -> int:
        """Re-estimate BatchNorm statistics on ``bn_recalibration_batches`` training batches (DESIGN.md §3).

        Uses a fixed seed in a forked RNG, so it neither depends on nor disturbs the training RNG. A batch holding
        NaN/Inf is left out. Returns the number of batches used.
        """
        n = self.hparams.bn_recalibration_batches
        loader = self._train_loader_for_recalibration() if n > 0 else None
        if loader is None:
            return 0
        inputs = (self._to_device(batch)[0] for batch in loader)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(BN_RECALIBRATION_SEED)
            return recalibrate_batchnorm(self, inputs, max_batches=n)  # self(x): the mean over the T time steps

    def _to_device(self, batch):
        if self._trainer is None:
            return batch
        # as the loops do: the precision plugin's input conversion (bf16-true: float inputs to bf16), then the device
        return self.trainer.strategy.batch_to_device(self.trainer.precision_plugin.convert_input(batch))

    def _train_loader_for_recalibration(self):
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "train_dataloader"):
            if not getattr(self, "_warned_no_recalibration", False):
                log.warning("BatchNorm recalibration skipped: no DataModule with a train_dataloader")
                self._warned_no_recalibration = True
            return None
        if getattr(datamodule, "train_set", None) is None and hasattr(datamodule, "setup"):
            datamodule.setup("fit")
        return datamodule.train_dataloader()
