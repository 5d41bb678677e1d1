from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger


def csv_trainer(tmp_path: Path, callbacks, **kwargs) -> L.Trainer:
    """A small CPU trainer that logs to ``tmp_path/csv/version_0/metrics.csv``."""
    defaults = dict(accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="csv", version=0),
                    callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
                    limit_val_batches=0, log_every_n_steps=2)
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def read_metrics(tmp_path: Path) -> list[dict[str, float]]:
    """Rows of metrics.csv with the empty cells dropped and values as floats."""
    with open(tmp_path / "csv" / "version_0" / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def rows_with(rows: list[dict[str, float]], key: str) -> list[dict[str, float]]:
    return [row for row in rows if key in row]
