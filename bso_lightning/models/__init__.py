"""Binary spiking models built from ``bso_lightning.nn``: torchvision-style factories."""

from bso_lightning.models.factory import ARCHITECTURES, build_model
from bso_lightning.models.resnet import BiRealUnit, resnet18
from bso_lightning.models.size import model_size_bytes
from bso_lightning.models.spec import ModelSpec, build_model_from_hparams
from bso_lightning.models.vgg import small_cnn, spiking_vgg, vgg11

__all__ = ["ARCHITECTURES", "BiRealUnit", "ModelSpec", "build_model", "build_model_from_hparams", "model_size_bytes",
           "resnet18", "small_cnn", "spiking_vgg", "vgg11"]
