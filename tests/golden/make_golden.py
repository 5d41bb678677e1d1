"""Fingerprints of short training runs, to show a refactor changes no number (issue 22).

Each case trains the tiny classifier (``small_cnn`` width 8, T = 2) on the embedded digits for 2 epochs of
4 batches (seed 0, deterministic, one thread) and fingerprints everything training leaves: every entry of the
model's state dict and every optimizer state tensor, as the SHA-256 of its bytes (bit for bit, one machine)
and its float64 sum and absolute sum (to compare across CPUs, where the last bit of a float may differ).

    python tests/golden/make_golden.py              # (re)write tests/golden/runs.json from this checkout
    python tests/golden/make_golden.py --check      # compare this checkout with runs.json: bit for bit?

``runs.json`` was written before the refactor of issue 22; ``tests/test_golden_runs.py`` checks the sums
(and the binary weights' signs exactly) in the suite. The cases are described by ``CASES``: a change of the
classifier's constructor changes only :func:`build_task`, never the cases.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bso_lightning.tasks import OnlineClassifier  # noqa: E402
from bso_lightning.trainers import quiet_trainer  # noqa: E402
from datamodules import DigitsDataModule  # noqa: E402

GOLDEN = Path(__file__).with_name("runs.json")

#: Each case: the settings that differ from the library defaults (names of the pre-refactor constructor).
CASES: dict[str, dict[str, Any]] = {
    "tbso_defaults": {},
    "bso_reset_on_flip": {"optimizer": "bso", "reset_momentum_on_flip": True},
    "tbso_dense_outside_step": {"weight_storage": "dense", "eps_placement": "outside", "schedule": "step",
                                "schedule_every": 1, "schedule_interval": "step", "lr_schedule": "constant"},
    "tbso_step_after_backward": {"step_in_backward": False},
    "tbso_accumulated_ndot": {"update_mode": "accumulated", "trace": "ndot", "batchnorm_statistics": "pooled"},
    "bso_bfloat16_momentum": {"optimizer": "bso", "momentum_dtype": "bfloat16", "weight_decay": 1e-4},
}


def build_task(settings: dict[str, Any]) -> L.LightningModule:
    """The tiny classifier with ``settings`` applied (the one place that knows the constructor): the recorded flat
    settings translated to the constructor of issue 22 (optimizer, schedule, fp_optimizer, lr_scheduler, loop)."""
    from bso_lightning.tasks.legacy import translate_online

    flat = {"arch": "small_cnn", "arch_kwargs": {"width": 8}, "time_steps": 2, "bn_recalibration_batches": 2,
            "fused_optimizer": False, "step_in_backward": True, **settings}  # (step_in_backward: the old default)
    return OnlineClassifier(**translate_online(flat))


def _fingerprint(tensor: torch.Tensor) -> dict[str, Any]:
    t = tensor.detach().cpu().contiguous()
    as_float = t.double() if t.is_floating_point() or t.dtype in (torch.int8, torch.uint8, torch.int64) else t
    return {"dtype": str(t.dtype), "shape": list(t.shape),
            "sha256": hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest(),
            "sum": float(as_float.sum()), "abs_sum": float(as_float.abs().sum())}


def run_case(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Train one case; the fingerprints of its model state and optimizer states, by name."""
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    task = build_task(settings)
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=0, deterministic=True)
    trainer.fit(task, DigitsDataModule(batch_size=16))
    prints: dict[str, dict[str, Any]] = {}
    for name, tensor in task.state_dict().items():
        prints[f"model.{name}"] = _fingerprint(tensor)
    for i, optimizer in enumerate(trainer.optimizers):
        for key, state in optimizer.state_dict()["state"].items():
            for field, value in state.items():
                if isinstance(value, torch.Tensor):
                    prints[f"optimizer{i}.{key}.{field}"] = _fingerprint(value)
    return prints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with runs.json instead of writing it")
    args = parser.parse_args()
    runs = {name: run_case(settings) for name, settings in CASES.items()}
    if not args.check:
        GOLDEN.write_text(json.dumps(runs, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN} ({sum(map(len, runs.values()))} tensors in {len(runs)} runs)")
        return
    golden = json.loads(GOLDEN.read_text())
    differ = 0
    for case, prints in runs.items():
        same = [name for name, p in prints.items() if golden[case].get(name, {}).get("sha256") == p["sha256"]]
        missing = sorted(set(golden[case]) ^ set(prints))
        differ += len(prints) - len(same) + len(missing)
        print(f"{case}: {len(same)}/{len(prints)} tensors bit-identical" + (f"; names differ: {missing}" if missing else ""))
    print("bit-identical" if not differ else f"{differ} tensors differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
