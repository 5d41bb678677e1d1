"""Packed export: 1 bit per binary weight, bit-exact round trip, VGG-11 CIFAR-10 within 1.25 MB, clear errors."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from spikingjelly.activation_based import functional

from bso_lightning.export import PackedModelError, export_packed, load_packed, main, read_header
from bso_lightning.models import model_size_bytes, small_cnn, vgg11
from bso_lightning.optim import split_parameters
from bso_lightning.tasks import OnlineClassifier
from datamodules import DigitsDataModule


def _outputs(model, x, time_steps=2):
    model.eval()
    functional.reset_net(model)
    with torch.no_grad():
        out = [model(x) for _ in range(time_steps)]
    functional.reset_net(model)
    return out


def _scramble_(model, seed=0):
    """Random ±1 binary weights and non-trivial BatchNorm statistics, as after training."""
    gen = torch.Generator().manual_seed(seed)
    binary = {id(p) for p in split_parameters(model).binary}
    with torch.no_grad():
        for p in model.parameters():
            if id(p) in binary:
                p.copy_(torch.randint(0, 2, p.shape, generator=gen) * 2.0 - 1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
            elif name.endswith("num_batches_tracked"):
                b.fill_(4321)


@pytest.fixture(scope="module")
def packed_vgg(tmp_path_factory):
    model = vgg11(num_classes=10, in_channels=3)
    _scramble_(model)
    path = tmp_path_factory.mktemp("export") / "vgg11_cifar10.bso"
    size = export_packed(model, path, arch="vgg11", arch_kwargs={"num_classes": 10, "in_channels": 3})
    return model, path, size


def test_vgg11_cifar10_round_trip_is_bit_exact_and_within_1_25_mb(packed_vgg):
    model, path, size = packed_vgg
    assert size == path.stat().st_size
    assert model_size_bytes(model) == 1_201_448  # the paper's 1.20 MB
    assert size <= 1_250_000, size  # + float32 running statistics + header
    loaded = load_packed(path)
    assert not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x = torch.rand(2, 3, 32, 32)
    for a, b in zip(_outputs(model, x), _outputs(loaded, x)):
        assert torch.equal(a, b)


def test_header_describes_the_tensors(packed_vgg):
    model, path, _ = packed_vgg
    header = read_header(path)
    assert header["arch"] == "vgg11" and header["kwargs"] == {"num_classes": 10, "in_channels": 3}
    kinds = {entry["name"]: entry["kind"] for entry in header["tensors"]}
    assert kinds["3.weight"] == "binary" and kinds["0.weight"] == "float32"
    assert kinds["1.running_var"] == "float32" and kinds["1.num_batches_tracked"] == "int"
    binary = [e for e in header["tensors"] if e["kind"] == "binary"]
    assert sum(e["nbytes"] for e in binary) == sum((p.numel() + 7) // 8 for p in split_parameters(model).binary)


def test_bits_are_one_for_plus_one(tmp_path):
    model = small_cnn(width=8)
    with torch.no_grad():
        w = model[3].weight
        w.fill_(-1.0)
        w.view(-1)[0] = 1.0
        w.view(-1)[9] = 1.0
    path = tmp_path / "m.bso"
    export_packed(model, path, arch="small_cnn", arch_kwargs={"width": 8})
    header = read_header(path)
    blob = path.read_bytes()
    start = len(blob) - 4 - header["payload_bytes"]
    offset = 0
    for entry in header["tensors"]:
        if entry["name"] == "3.weight":
            break
        offset += entry["nbytes"]
    data = blob[start + offset:start + offset + 2]
    assert data == bytes([0b10000000, 0b01000000])  # weights 0 and 9 are +1, MSB first


def test_refuses_binary_tensor_that_is_not_plus_minus_one(tmp_path):
    model = small_cnn(width=8)
    with torch.no_grad():
        model[3].weight.view(-1)[5] = 0.0
    with pytest.raises(ValueError, match=r"3\.weight.*±1"):
        export_packed(model, tmp_path / "bad.bso", arch="small_cnn", arch_kwargs={"width": 8})
    assert not (tmp_path / "bad.bso").exists()


def test_plain_module_needs_a_spec_that_rebuilds_it(tmp_path):
    model = small_cnn(width=8)
    with pytest.raises(ValueError, match="arch is required"):
        export_packed(model, tmp_path / "m.bso")
    with pytest.raises(ValueError, match="other tensors"):
        export_packed(model, tmp_path / "m.bso", arch="small_cnn", arch_kwargs={"width": 16})


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "not_packed", "empty"])
def test_corrupt_files_raise_an_error_naming_the_file(packed_vgg, tmp_path, damage):
    _, path, _ = packed_vgg
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "flip_byte":
        blob[len(blob) // 2] ^= 0xFF
    elif damage == "not_packed":
        blob = bytearray(b"PK\x03\x04 not a packed model")
    else:
        blob = bytearray()
    bad = tmp_path / f"{damage}.bso"
    bad.write_bytes(bytes(blob))
    with pytest.raises(PackedModelError, match=str(bad)):
        load_packed(bad)


def test_cli_exports_a_lightning_checkpoint(tmp_path, capsys):
    task = OnlineClassifier(arch="small_cnn", arch_kwargs={"width": 8}, time_steps=2, cosine_epochs=1,
                            bn_recalibration_batches=0)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(task, datamodule=DigitsDataModule(batch_size=16))
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    out = tmp_path / "model.bso"
    assert main([str(ckpt), str(out)]) == 0
    assert "bytes" in capsys.readouterr().out
    loaded = load_packed(out)
    x = torch.rand(4, 1, 16, 16)
    for a, b in zip(_outputs(task.model, x), _outputs(loaded, x)):
        assert torch.equal(a, b)
    assert read_header(out)["kwargs"]["width"] == 8

    assert main([str(tmp_path / "missing.ckpt"), str(out)]) == 1
    assert "missing.ckpt" in capsys.readouterr().err
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    assert main([str(tmp_path / "other.ckpt"), str(out)]) == 1
    assert "other.ckpt" in capsys.readouterr().err
