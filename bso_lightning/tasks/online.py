"""The online BSNN classifier: BSO/T-BSO flips binary weights at every time step (paper Alg. 1).

Per training batch: reset the neurons; for t = 0..T−1 run one forward step, compute L[t] (Eq. 8),
backpropagate spatially only (the neuron state is detached between steps), and — in ``realtime`` mode —
step BSO/T-BSO (with t) and SGD. In ``accumulated`` mode gradients add up over the T steps and both
optimizers step once after the last step (T-BSO then uses time_step 0).

Step counting: Lightning's ``trainer.global_step`` counts every ``optimizer.step()`` call. With two
optimizers it grows by 2·T per batch in ``realtime`` mode and by 2 per batch in ``accumulated`` mode, so
``max_steps`` is in those units; metrics are logged per batch, and the cosine learning rate and the BSO
hyper-parameter schedules advance once per epoch (or per batch, with ``schedule_interval="step"``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any, Literal, Optional

import lightning as L
import torch
from spikingjelly.activation_based import functional
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from bso_lightning.models import build_model
from bso_lightning.nn import binarize_
from bso_lightning.nn.batchnorm import recalibrate_batchnorm
from bso_lightning.optim import (
    BSO, TBSO, BinaryHyperparameterScheduler, ConstantDecay, InverseSqrtDecay, StepDecay, check_partition,
    split_parameters,
)
from bso_lightning.optim._common import check_betas, check_decay, check_eps, check_threshold
from bso_lightning.tasks.batch import check_time_steps, input_at_time_step
from bso_lightning.tasks.faults import (
    CheckpointError, NonFiniteError, NonFiniteWarning, all_finite, check_checkpoint, check_compatible,
    describe_nonfinite, nonfinite_gradients, step_if,
)
from bso_lightning.tasks.loss import online_loss

log = logging.getLogger(__name__)

OPTIMIZERS = ("bso", "tbso")
UPDATES = ("realtime", "accumulated")
SCHEDULES = ("constant", "step", "inv_sqrt")
NONFINITE = ("skip", "raise")
BN_RECALIBRATION_SEED = 1234


class OnlineClassifier(L.LightningModule):
    """Binary spiking classifier trained online with BSO or T-BSO (binary weights) and SGD (the rest).

    Args:
        arch: model factory name (``vgg11``, ``resnet18``, ``small_cnn``).
        num_classes: number of classes (linked from the DataModule by the CLI).
        in_channels: input channels (linked from the DataModule by the CLI).
        arch_kwargs: extra keyword arguments of the model factory (e.g. ``{"width": 32}``, ``{"stem": "cifar"}``).
        time_steps: T, the number of time steps each sample is presented for.
        optimizer: ``"tbso"`` (Eq. 13–14) or ``"bso"`` (Eq. 11–12) for the binary weights.
        trace: presynaptic trace for the online gradient, ``"ottt"`` or ``"ndot"`` (Eq. 6–7).
        update_mode: ``"realtime"`` (step after every t, the paper's default) or ``"accumulated"`` (once per batch).
        threshold: γ, the flip threshold.
        beta: BSO momentum decay β.
        betas: T-BSO decays (β1, β2).
        eps: T-BSO ε.
        reset_momentum_on_flip: BSO only — zero the momentum where a weight flipped (the authors' code).
        schedule: decay of γ and 1 − β (β1): ``"constant"``, ``"step"`` (× ``schedule_factor`` every
            ``schedule_every`` units) or ``"inv_sqrt"`` (1/sqrt(1 + k/``schedule_scale``)).
        schedule_interval: unit k of the schedule: ``"epoch"`` or ``"step"`` (one per training batch).
        lr: SGD learning rate of the full-precision parameters (cosine-annealed to 0).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        cosine_epochs: length of the cosine annealing in epochs (default: ``trainer.max_epochs``).
        mse_weight: α of the loss (Eq. 8).
        decay: membrane decay λ of every neuron.
        v_threshold: firing threshold Vth of every neuron.
        bn_recalibration_batches: before every validation/test/predict epoch, re-estimate BatchNorm
            statistics over this many training batches with the current weights (0 disables it).
        nonfinite: what NaN/Inf does (see ``bso_lightning.tasks.faults``). ``"skip"``: a batch whose input is
            not finite is dropped with a warning (one host sync per batch for that check); a non-finite gradient
            changes nothing (BSO/T-BSO skip that tensor, the SGD step is undone on the device); both are counted
            and logged as ``faults/nonfinite_inputs`` (batches) and ``faults/nonfinite_grads`` (skipped updates:
            one per binary tensor and time step, plus one per full-precision step). ``"raise"``: stop with
            ``NonFiniteError`` naming the batch, the time step and the culprit (one host sync per time step).
        pretrained: a Lightning checkpoint whose model weights (binary ones included) initialise this model —
            only the weights: epochs, optimizer state and schedules start afresh (ImageNet: pre-train with
            T = 1, then fine-tune with T = 4–6 from those weights). The architecture must match.
    """

    def __init__(
        self,
        arch: str = "small_cnn",
        num_classes: int = 10,
        in_channels: int = 1,
        arch_kwargs: Optional[dict[str, Any]] = None,
        time_steps: int = 4,
        optimizer: Literal["bso", "tbso"] = "tbso",
        trace: Literal["ottt", "ndot"] = "ottt",
        update_mode: Literal["realtime", "accumulated"] = "realtime",
        threshold: float = 5e-7,
        beta: float = 0.999,
        betas: tuple[float, float] = (0.999, 0.99999),
        eps: float = 1e-10,
        reset_momentum_on_flip: bool = False,
        schedule: Literal["constant", "step", "inv_sqrt"] = "constant",
        schedule_interval: Literal["epoch", "step"] = "epoch",
        schedule_every: int = 50,
        schedule_factor: float = 0.1,
        schedule_scale: float = 1.0,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        cosine_epochs: Optional[int] = None,
        mse_weight: float = 0.05,
        decay: float = 0.5,
        v_threshold: float = 1.0,
        bn_recalibration_batches: int = 20,
        nonfinite: Literal["skip", "raise"] = "skip",
        pretrained: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        _check_choice("optimizer", optimizer, OPTIMIZERS)
        _check_choice("update_mode", update_mode, UPDATES)
        _check_choice("schedule", schedule, SCHEDULES)
        _check_choice("schedule_interval", schedule_interval, ("epoch", "step"))
        _check_choice("nonfinite", nonfinite, NONFINITE)
        # every optimizer hyper-parameter is checked, also those the chosen optimizer ignores (beta for T-BSO, ...)
        check_threshold(threshold), check_decay(beta, "beta"), check_betas(betas), check_eps(eps)
        if not isinstance(time_steps, int) or time_steps < 1:
            raise ValueError(f"time_steps must be an integer >= 1, got {time_steps!r}")
        if not 0.0 <= mse_weight <= 1.0:
            raise ValueError(f"mse_weight must lie in [0, 1], got {mse_weight}")
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        if bn_recalibration_batches < 0:
            raise ValueError(f"bn_recalibration_batches must be >= 0, got {bn_recalibration_batches}")
        self.model = build_model(arch, num_classes=num_classes, in_channels=in_channels, trace=trace,
                                 decay=decay, v_threshold=v_threshold, **(arch_kwargs or {}))
        self.split = split_parameters(self.model)
        if not self.split.binary:
            raise ValueError(f"arch {arch!r} has no binary parameters for {optimizer.upper()} to train")
        self._make_binary_optimizer()  # validates the BSO/T-BSO hyper-parameters before any training
        self._make_schedule_decay()
        if pretrained:
            self._load_pretrained_weights(pretrained)
        self.train_acc = MulticlassAccuracy(num_classes)
        self.val_acc = MulticlassAccuracy(num_classes)
        self.test_acc = MulticlassAccuracy(num_classes)
        # [input batches skipped, full-precision steps skipped] for non-finite values; saved in checkpoints
        self.register_buffer("_fault_counts", torch.zeros(2, dtype=torch.int64), persistent=False)

    def _load_pretrained_weights(self, path: str) -> None:
        check_checkpoint(path, self.hparams)  # names the file if it is missing, truncated or of another architecture
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(weights, strict=True)
        except RuntimeError as error:
            raise CheckpointError(path, f"its model weights do not fit arch {self.hparams.arch!r}: {error}") from error
        for weight in self.split.binary:
            binarize_(weight)  # already ±1 in a BSO checkpoint; this also maps a latent-weight checkpoint to ±1

    # ----------------------------------------------------------------- optimizers
    def _make_binary_optimizer(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "bso":
            return BSO(self.split.binary, threshold=hp.threshold, beta=hp.beta,
                       reset_momentum_on_flip=hp.reset_momentum_on_flip)
        return TBSO(self.split.binary, threshold=hp.threshold, betas=tuple(hp.betas), eps=hp.eps)

    def _make_schedule_decay(self):
        hp = self.hparams
        if hp.schedule == "step":
            return StepDecay(every=hp.schedule_every, factor=hp.schedule_factor)
        if hp.schedule == "inv_sqrt":
            return InverseSqrtDecay(scale=hp.schedule_scale)
        return ConstantDecay()

    def configure_optimizers(self):
        hp = self.hparams
        binary_opt = self._make_binary_optimizer()
        fp_opt = torch.optim.SGD(self.split.full_precision, lr=hp.lr, momentum=hp.momentum,
                                 weight_decay=hp.weight_decay)
        check_partition(self.model, [binary_opt, fp_opt])
        epochs = hp.cosine_epochs or (self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else None)
        if epochs is None:
            raise ValueError("cosine_epochs must be set when the trainer has no max_epochs (the cosine schedule "
                             "of the full-precision learning rate runs over epochs)")
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(fp_opt, T_max=epochs, eta_min=0.0)
        binary_schedule = BinaryHyperparameterScheduler(binary_opt, self._make_schedule_decay())
        return [binary_opt, fp_opt], [cosine, binary_schedule]

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

    def training_step(self, batch, batch_idx: int) -> Optional[Tensor]:
        x, y = batch
        hp = self.hparams
        check_time_steps(x, hp.time_steps)
        binary_opt, fp_opt = self.optimizers()
        if self._skip_nonfinite_input(x, batch_idx):
            self._log_faults(binary_opt, len(y))
            self._advance_schedules()
            return None
        functional.reset_net(self.model)
        output_sum = torch.zeros((), device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        realtime = hp.update_mode == "realtime"
        for t in range(hp.time_steps):
            out = self.model(input_at_time_step(x, t))
            loss = online_loss(out, y, hp.time_steps, hp.mse_weight)
            self.manual_backward(loss)
            if realtime or t == hp.time_steps - 1:
                self._optimizer_step(binary_opt, fp_opt, t if realtime else 0, batch_idx)
                binary_opt.zero_grad(set_to_none=True)
                fp_opt.zero_grad(set_to_none=True)
            output_sum = output_sum + out.detach()
            loss_sum = loss_sum + loss.detach()
        functional.reset_net(self.model)
        self.train_acc(output_sum / hp.time_steps, y)
        self.log("train/loss", loss_sum, prog_bar=True, batch_size=len(y))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        self._log_faults(binary_opt, len(y))
        self._advance_schedules()
        return loss_sum

    def _advance_schedules(self) -> None:
        """Step the schedules after a batch; the per-epoch ones after the epoch's last batch.

        (Not in ``on_train_epoch_end``: like Lightning's own epoch-interval schedulers, they must have
        stepped before a checkpoint saved at the end of the epoch's last batch, since a run resumed from
        that checkpoint starts the next epoch without running the epoch-end hooks.)
        """
        cosine, binary_schedule = self.lr_schedulers()
        if self.hparams.schedule_interval == "step":
            binary_schedule.step()
        if self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            cosine.step()
            if self.hparams.schedule_interval == "epoch":
                binary_schedule.step()

    # ----------------------------------------------------------------- non-finite values
    def _skip_nonfinite_input(self, x: Tensor, batch_idx: int) -> bool:
        """One finiteness check per batch (a host sync); under DDP every process skips (or raises) together."""
        local = not bool(torch.isfinite(x).all())
        if not self.trainer.strategy.reduce_boolean_decision(local, all=False):
            return False
        what = f"its input holds {describe_nonfinite(x)}" if local else "the batch of another process holds NaN/Inf"
        where = f"batch {batch_idx} of epoch {self.current_epoch}"
        if self.hparams.nonfinite == "raise":
            raise NonFiniteError(f"{where}: {what} (nonfinite='raise'; nonfinite='skip' drops such batches)")
        warnings.warn(f"{where} skipped: {what} (nonfinite='skip')", NonFiniteWarning, stacklevel=2)
        self._fault_counts[0] += 1
        return True

    def _optimizer_step(self, binary_opt, fp_opt, time_step: int, batch_idx: int) -> None:
        if self.hparams.nonfinite == "raise":
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if not bool(all_finite(grads)):  # one host sync per time step in "raise" mode
                raise NonFiniteError(
                    f"batch {batch_idx} of epoch {self.current_epoch}, time step {time_step}: the gradient of "
                    f"{', '.join(nonfinite_gradients(self.named_parameters()))} is not finite "
                    "(nonfinite='raise'; this step's update was not applied)")
            binary_opt.step(time_step=time_step)
            fp_opt.step()
            return
        ok = all_finite([p.grad for p in self.split.full_precision if p.grad is not None])
        binary_opt.step(time_step=time_step)  # leaves a tensor with a non-finite update as it is (no sync)
        step_if(fp_opt, ok)  # the SGD step is undone on the device if a full-precision gradient is not finite
        self._fault_counts[1] += ~ok

    def _log_faults(self, binary_opt, batch_size: int) -> None:
        """Cumulative counts (no host sync): batches dropped, updates skipped for non-finite gradients."""
        skipped_updates = binary_opt.nonfinite_counts().sum() + self._fault_counts[1]
        self.log("faults/nonfinite_inputs", self._fault_counts[0].float(), batch_size=batch_size)
        self.log("faults/nonfinite_grads", skipped_updates.float(), batch_size=batch_size)

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also save the running training accuracy of the epoch and the fault counts (exact mid-epoch resume)."""
        checkpoint["online_classifier"] = {
            "epoch": self.current_epoch,
            "train_acc": {k: v.detach().clone() for k, v in self.train_acc.metric_state.items()
                          if isinstance(v, Tensor)},
            "fault_counts": self._fault_counts.detach().clone(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another architecture (naming the file); restore what ``on_save_checkpoint`` added."""
        saved = checkpoint.get("hyper_parameters")
        if isinstance(saved, Mapping):
            path = self._trainer.ckpt_path if self._trainer is not None else None
            check_compatible(saved, self.hparams, path or "<checkpoint>")
        extra = checkpoint.get("online_classifier", {})
        self._resumed_train_acc = (extra.get("epoch"), extra.get("train_acc", {}))
        if "fault_counts" in extra:
            self._fault_counts.copy_(extra["fault_counts"])

    def on_train_start(self) -> None:
        """Resuming mid-epoch: continue the epoch's training accuracy from the checkpoint."""
        epoch, state = getattr(self, "_resumed_train_acc", (None, {}))
        self._resumed_train_acc = (None, {})
        if epoch == self.current_epoch:  # (not when the saved epoch had ended)
            for name, value in state.items():
                setattr(self.train_acc, name, value.to(self.device))

    def _binary_schedule(self) -> BinaryHyperparameterScheduler:
        return self.lr_schedulers()[1]

    # ----------------------------------------------------------------- evaluation
    def _evaluate(self, batch, metric: MulticlassAccuracy, stage: str) -> Tensor:
        x, y = batch
        output = self(x)
        loss = online_loss(output, y, 1, self.hparams.mse_weight)
        metric(output, y)
        self.log(f"{stage}/loss", loss, batch_size=len(y), sync_dist=True)  # mean over DDP processes at epoch end
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._evaluate(batch, self.val_acc, "val")

    def test_step(self, batch, batch_idx: int) -> Tensor:
        return self._evaluate(batch, self.test_acc, "test")

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).argmax(-1)

    def on_validation_epoch_start(self) -> None:
        self.recalibrate_batchnorm()

    def on_test_epoch_start(self) -> None:
        self.recalibrate_batchnorm()

    def on_predict_epoch_start(self) -> None:
        self.recalibrate_batchnorm()

    def recalibrate_batchnorm(self) -> int:
        """Re-estimate BatchNorm statistics on ``bn_recalibration_batches`` training batches (DESIGN.md §3).

        Uses a fixed seed in a forked RNG, so it neither depends on nor disturbs the training RNG.
        """
        n = self.hparams.bn_recalibration_batches
        loader = self._train_loader_for_recalibration() if n > 0 else None
        if loader is None:
            return 0
        was_training = self.training

        def forward(batch) -> None:
            x = self._to_device(batch)[0]
            if bool(torch.isfinite(x).all()):  # a batch holding NaN/Inf would poison the statistics: left out
                self(x)

        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(BN_RECALIBRATION_SEED)
            used = recalibrate_batchnorm(self.model, loader, forward, max_batches=n)
        self.train(was_training)
        return used

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


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
