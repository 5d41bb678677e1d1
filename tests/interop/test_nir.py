"""NIR export: read back by ``nir.read``, run by snntorch (a library we did not write) and by our own importer."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from spikingjelly.activation_based import functional

import nir  # the [nir] extra (pip install -e '.[dev,nir]'), installed by .ci/run
import snntorch

from bso_lightning.export_nir import main
from bso_lightning.interop.consumers import run_sequence, snntorch_outputs
from bso_lightning.interop.nir import DEFAULT_DT, NIRExportError, export_nir, import_nir, read_nir, write_nir
from bso_lightning.models import resnet18, vgg11
from bso_lightning.nn import OnlineLIFNode

REPO = Path(__file__).resolve().parents[2]


def _benchmark():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("nir_agreement", REPO / "benchmarks" / "nir_agreement.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


@pytest.fixture(scope="module")
def trained():
    bench = _benchmark()
    bench.quiet_lightning()
    task, x, y = bench.train_digits_model(seed=0, epochs=1)
    return bench, task, x, y


def test_snntorch_runs_the_exported_graph_and_our_importer_reproduces_it(trained, tmp_path):
    bench, task, x, y = trained
    result = bench.compare(task, x, y, "separate", tmp_path)
    for name in bench.CONSUMERS:
        r = result[name]
        print(f"{name}: agreement {100 * r['agreement']:.1f} %, max |Δ| {r['max_abs_diff']:.3g}, "
              f"mean |Δ| {r['mean_abs_diff']:.3g}, accuracy {100 * r['accuracy']:.1f} %")
    own = result["own importer"]
    assert own["agreement"] == 1.0 and own["max_abs_diff"] == 0.0  # exact round trip
    # snntorch, with the reset our graph's metadata states, agrees on nearly every digit ...
    assert result["snntorch (subtract)"]["agreement"] >= 0.9
    # ... and with NIR's own LIF reset (to zero) it computes something measurably different
    assert result["snntorch (NIR reset)"]["max_abs_diff"] > 0.0
    assert result["snntorch (NIR reset)"]["agreement"] >= 0.7


def test_graph_holds_binary_weights_lif_parameters_and_time_step(trained, tmp_path):
    _, task, x, _ = trained
    path = tmp_path / "m.nir"
    write_nir(export_nir(task, (1, 8, 8), dt=2e-3), path)
    graph = nir.read(str(path))
    assert graph.metadata["dt"] == 2e-3 and graph.metadata["time_steps"] == task.hparams.time_steps
    kinds = [type(graph.nodes[name]).__name__ for name, _ in task.model.named_children() if name != "stem_pool"]
    assert "stem_pool" not in graph.nodes  # 8×8 input: small_cnn's stem pool is the identity, no node
    assert kinds[:3] == ["Conv2d", "Conv2d", "LIF"] and kinds[-2:] == ["Flatten", "Affine"]
    binary = [n for n in graph.nodes.values() if n.metadata.get("bso_layer") in ("binary_conv", b"binary_conv")]
    assert binary and all(set(np.unique(n.weight)) <= {-1.0, 1.0} for n in binary)
    lif = graph.nodes["2"]
    lam, vth = task.model[2].decay, task.model[2].v_threshold
    np.testing.assert_allclose(lif.tau, 2e-3 / (1 - lam))
    np.testing.assert_allclose(lif.r * 2e-3 / lif.tau, 1.0)  # input not decayed: R·dt/τ = 1
    np.testing.assert_allclose(lif.v_threshold, vth)
    np.testing.assert_array_equal(lif.v_leak, 0.0)
    assert lif.tau.shape == (8, 8, 8)
    folded = export_nir(task, (1, 8, 8), batchnorm="fold")
    assert len(folded.nodes) == len(graph.nodes) - 3  # the three BatchNorm nodes folded into their convs


def test_lif_mapping_is_snntorch_leaky_with_subtract_until_double_threshold():
    """Neuron level: NIR's LIF with our parameters, in snntorch, is our neuron when u < 2·Vth."""
    gen = torch.Generator().manual_seed(0)
    inputs = torch.rand(30, 2000, generator=gen)
    ours = OnlineLIFNode().eval()
    dt = DEFAULT_DT
    beta = 1 - dt / (dt / (1 - ours.decay))  # what snntorch's importer computes from NIR's τ
    for scale, expect_equal in ((0.9, True), (3.0, False)):  # u stays < 2·Vth only for the first
        leaky = snntorch.Leaky(beta=beta, threshold=ours.v_threshold, reset_mechanism="subtract",
                               init_hidden=True, reset_delay=False)
        functional.reset_net(ours)
        with torch.no_grad():
            same = all(torch.equal(ours(scale * i), leaky(scale * i)) for i in inputs)
        assert same == expect_equal


def test_vgg11_event_input_round_trip(tmp_path):
    torch.manual_seed(0)
    model = vgg11(num_classes=11, in_channels=2).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    x = (torch.rand(2, 3, 2, 16, 16) < 0.3).float()  # [B, T, C, H, W] event frames
    path = tmp_path / "vgg.nir"
    write_nir(export_nir(model, (2, 16, 16)), path)
    back = import_nir(path)
    with torch.no_grad():
        assert torch.equal(run_sequence(model, x, 3), run_sequence(back, x, 3))


def test_resnet18_residual_graph_round_trip_and_snntorch(tmp_path):
    """Bi-Real units: both branches feed the next node (NIR sums incoming edges); rebuilt exactly from 'arch'."""
    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "in_channels": 3, "stem": "cifar"}
    model = resnet18(**kwargs).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    graph = export_nir(model, (3, 8, 8), arch="resnet18", arch_kwargs=kwargs)
    assert {("3.bn", "4.neuron"), ("1", "4.neuron"), ("5.bn", "6.shortcut.0"), ("5.bn", "6.neuron")} <= set(graph.edges)
    path = tmp_path / "resnet.nir"
    write_nir(graph, path)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        ours = run_sequence(model, x, 2)
        assert torch.equal(run_sequence(import_nir(path), x, 2), ours)
    theirs = snntorch_outputs(path, x, 2, reset="subtract")
    assert theirs.shape == ours.shape and torch.isfinite(theirs).all()
    assert (theirs - ours).abs().max() < 0.5 * ours.abs().max()  # the same network, up to the u >= 2·Vth rule
    graph.metadata["batchnorm"] = "fold"  # as a folded export would say
    with pytest.raises(NIRExportError, match="batchnorm='separate'"):
        import_nir(graph)
    del graph.metadata["arch"]  # without arch only chains are imported, node by node
    with pytest.raises(NIRExportError, match="successors"):
        import_nir(graph)


def test_bad_models_and_graphs_are_named(tmp_path):
    with pytest.raises(NIRExportError, match="MaxPool2d.*stem='cifar'"):
        export_nir(resnet18(num_classes=10), (3, 32, 32))  # the ImageNet stem's max pooling
    model = vgg11(in_channels=1).eval()
    with pytest.raises(ValueError, match="dt"):
        export_nir(model, (1, 16, 16), dt=0.0)
    with pytest.raises(ValueError, match="batchnorm"):
        export_nir(model, (1, 16, 16), batchnorm="merge")
    with pytest.raises(ValueError, match="input_shape"):
        export_nir(model, (16, 16))
    graph = export_nir(model, (1, 16, 16))
    graph.nodes["2"].metadata = {}  # a LIF as another tool writes it: NIR's reset to v_reset
    with pytest.raises(NIRExportError, match="'2'.*reset"):
        import_nir(graph)
    bad = tmp_path / "bad.nir"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(NIRExportError, match="bad.nir"):
        read_nir(bad)


def _save_checkpoint(task, path):
    """``task`` as a Lightning checkpoint at ``path`` (a trainer that only connects and saves)."""
    trainer = L.Trainer(accelerator="cpu", max_epochs=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=path.parent)
    trainer.strategy.connect(task)
    trainer.save_checkpoint(path)
    return path


def test_cli_exports_a_checkpoint(trained, tmp_path, capsys):
    _, task, x, _ = trained
    ckpt = _save_checkpoint(task, tmp_path / "m.ckpt")
    out = tmp_path / "m.nir"
    assert main([str(ckpt), str(out), "--input-shape", "1", "8", "8"]) == 0
    assert "NIR nodes" in capsys.readouterr().out
    with torch.no_grad():
        assert torch.equal(run_sequence(import_nir(out), x[:16], 4), task(x[:16]))
    assert main([str(tmp_path / "missing.ckpt"), str(out), "--input-shape", "1", "8", "8"]) == 1
    assert "missing.ckpt" in capsys.readouterr().err


def test_cli_refuses_to_overwrite_its_input_a_folder_and_a_wrong_input_shape(trained, tmp_path, capsys):
    """(issue 19) One-line errors, and the resumable checkpoint is never replaced by the export."""
    _, task, _, _ = trained
    ckpt = _save_checkpoint(task, tmp_path / "m.ckpt")
    before = ckpt.read_bytes()
    (tmp_path / "link.ckpt").symlink_to(ckpt)
    for out, message in [(ckpt, "is the input"), (tmp_path / "link.ckpt", "is the input"),
                         (tmp_path, "is a folder")]:
        assert main([str(ckpt), str(out), "--input-shape", "1", "8", "8"]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert ckpt.read_bytes() == before
    assert main([str(ckpt), str(tmp_path / "m.nir"), "--input-shape", "3", "8", "8"]) == 1
    err = capsys.readouterr().err
    assert "does not take inputs of shape [3, 8, 8]" in err and err.count("\n") == 1, err
    assert not (tmp_path / "m.nir").exists()


def test_export_of_per_time_step_batchnorm_warns_and_writes_the_pooled_statistics():
    """A NIR graph is the same at every step: a model with per-step BatchNorm statistics is exported with the pooled
    ones, and the exporter says so (PooledBatchNormWarning) instead of silently computing something else."""
    from bso_lightning.interop.nir import PooledBatchNormWarning
    from bso_lightning.nn.time_step_batchnorm import TimeStepBatchNorm2d
    from bso_lightning.tasks import OnlineClassifier

    task = OnlineClassifier(arch_kwargs={"width": 4}, time_steps=2)  # the default: per_time_step
    bn = next(m for m in task.model.modules() if isinstance(m, TimeStepBatchNorm2d))
    bn.running_mean.fill_(0.25)
    bn.running_mean_t.fill_(3.0)
    with pytest.warns(PooledBatchNormWarning, match="pooled over the time steps"):
        graph = export_nir(task, (1, 8, 8))
    assert "batchnorm_time_steps" not in graph.metadata["arch_kwargs"]
    np.testing.assert_array_equal(np.asarray(graph.nodes["1"].metadata["running_mean"]), 0.25)  # pooled, not 3.0
    pooled = OnlineClassifier(arch_kwargs={"width": 4}, time_steps=2, batchnorm_statistics="pooled")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PooledBatchNormWarning)
        export_nir(pooled, (1, 8, 8))
