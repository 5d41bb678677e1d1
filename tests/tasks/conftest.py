import lightning as L
import pytest

from bso_lightning.tasks import OnlineClassifier
from datamodules import DigitsDataModule


def make_trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                    num_sanity_val_steps=0, deterministic=True)
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def make_task(**kwargs) -> OnlineClassifier:
    defaults = dict(arch="small_cnn", arch_kwargs={"width": 8}, time_steps=2, cosine_epochs=2,
                    bn_recalibration_batches=2)
    defaults.update(kwargs)
    return OnlineClassifier(**defaults)


@pytest.fixture
def digits():
    return DigitsDataModule(batch_size=16)
