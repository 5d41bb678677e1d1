"""NIR export read back by another library: our model vs snntorch's NIR import vs our own importer.

Trains a small BSNN (``small_cnn``, T-BSO, online) on the embedded digits task, exports it with
``bso_lightning.interop.nir.export_nir``, writes it with ``nir.write``, reads it with ``nir.read`` and runs it:

* ``ours``: the trained model (``OnlineClassifier.forward``: mean output over T);
* ``own importer``: ``import_nir`` -> our layers (must match exactly);
* ``snntorch (NIR reset)``: ``snntorch.import_nir.import_from_nir`` as it is (its LIF resets to zero, NIR's rule);
* ``snntorch (subtract)``: the same network with snntorch's reset-by-subtraction switched on.

On the digits test split it reports prediction agreement with ``ours``, the output difference and each
one's accuracy, for both BatchNorm modes (``separate``: binary weights stay ±1; ``fold``).

    python benchmarks/nir_agreement.py            # full: 3 seeds x 4 epochs (a few minutes on one core)
    python benchmarks/nir_agreement.py --quick    # 1 seed x 1 epoch
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from _common import (apply_threads, add_output_args, machine_info, make_trainer, markdown_table, output_dir,
                     quiet_lightning, report_header, write_results)

CONSUMERS = ("own importer", "snntorch (NIR reset)", "snntorch (subtract)")


def train_digits_model(seed: int, epochs: int, image_size: int = 8, width: int = 8, time_steps: int = 4,
                       batchnorm_statistics: str = "pooled"):
    """A trained ``OnlineClassifier`` (small_cnn, T-BSO) and the digits test split ``(x, y)``.

    ``batchnorm_statistics="pooled"``: a NIR graph is the same at every time step, so a model meant for NIR is
    trained with one set of BatchNorm statistics (the export of a per-time-step model writes the pooled ones)."""
    import lightning as L
    import torch

    from functools import partial

    from bso_lightning.optim import CosineAnnealingToZero
    from bso_lightning.tasks import OnlineClassifier
    from datamodules import DigitsDataModule

    L.seed_everything(seed, verbose=False)
    dm = DigitsDataModule(batch_size=32, image_size=image_size, seed=seed)
    task = OnlineClassifier(arch="small_cnn", arch_kwargs={"width": width}, time_steps=time_steps,
                            lr_scheduler=partial(CosineAnnealingToZero, epochs=epochs), bn_recalibration_batches=4,
                            batchnorm_statistics=batchnorm_statistics)
    make_trainer(max_epochs=epochs, limit_val_batches=0).fit(task, datamodule=dm)
    task.eval()
    dm.setup()
    x = torch.stack([s[0] for s in dm.test_set])
    y = torch.stack([s[1] for s in dm.test_set])
    return task, x, y


def compare(task, x, y, batchnorm: str, folder: Path) -> dict[str, dict[str, float]]:
    """Export ``task`` to NIR, read it back, run it in each consumer; agreement with our outputs."""
    import torch

    from bso_lightning.interop.consumers import agreement, run_sequence, snntorch_outputs
    from bso_lightning.interop.nir import export_nir, import_nir, read_nir, write_nir

    T = task.hparams.time_steps
    path = folder / f"model_{batchnorm}.nir"
    size = write_nir(export_nir(task, tuple(x.shape[1:]), batchnorm=batchnorm), path)
    with torch.no_grad():
        ours = task(x)
        outputs = {"ours": ours,
                   "own importer": run_sequence(import_nir(read_nir(path)), x, T),
                   "snntorch (NIR reset)": snntorch_outputs(path, x, T, reset="nir"),
                   "snntorch (subtract)": snntorch_outputs(path, x, T, reset="subtract")}
    result: dict[str, Any] = {"file_bytes": size}
    for name, out in outputs.items():
        result[name] = {**agreement(ours, out), "accuracy": float((out.argmax(1) == y).float().mean())}
    return result


def vgg11_file_sizes(folder: Path) -> dict[str, int]:
    """Bytes of the VGG-11 CIFAR-10 network (freshly built: ±1 weights compress as trained ones do) per format."""
    import torch

    from bso_lightning.export import export_packed
    from bso_lightning.interop.nir import export_nir, write_nir
    from bso_lightning.models import vgg11

    torch.manual_seed(0)
    model = vgg11(num_classes=10, in_channels=3).eval()
    sizes = {"packed (.bso)": export_packed(model, folder / "vgg11.bso", arch="vgg11",
                                            arch_kwargs={"num_classes": 10, "in_channels": 3})}
    for batchnorm in ("separate", "fold"):
        sizes[f"NIR, batchnorm={batchnorm}"] = write_nir(export_nir(model, (3, 32, 32), batchnorm=batchnorm),
                                                         folder / f"vgg11_{batchnorm}.nir")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    add_output_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs = args.seeds[:1], 1
    apply_threads(args)
    quiet_lightning()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            task, x, y = train_digits_model(seed, args.epochs)
            for batchnorm in ("separate", "fold"):
                runs.append({"seed": seed, "batchnorm": batchnorm, **compare(task, x, y, batchnorm, Path(tmp))})
        sizes = vgg11_file_sizes(Path(tmp))
    rows = []
    for run in runs:
        for name in CONSUMERS:
            r = run[name]
            rows.append([run["seed"], run["batchnorm"], name, f"{100 * r['agreement']:.1f}", f"{r['max_abs_diff']:.3g}",
                         f"{r['mean_abs_diff']:.3g}", f"{100 * run['ours']['accuracy']:.1f}", f"{100 * r['accuracy']:.1f}"])
    table = markdown_table(["seed", "BatchNorm", "consumer", "agreement %", "max |Δout|", "mean |Δout|",
                            "ours acc %", "consumer acc %"], rows)
    info = machine_info()
    text = (report_header("NIR export: agreement of other consumers with our model (digits test split, 360 samples)",
                          info) + f"\nsmall_cnn width 8, 8x8 inputs, T = 4, T-BSO, {args.epochs} epoch(s)\n\n" + table
            + "\n\nFile size of VGG-11 (CIFAR-10) per format (nir.write compresses with gzip):\n\n"
            + markdown_table(["format", "bytes"], [[k, f"{v:,}"] for k, v in sizes.items()]))
    print(text)
    write_results(output_dir(args), "nir_agreement", text, {"machine": info, "epochs": args.epochs, "runs": runs,
                                                          "vgg11_file_bytes": sizes})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
