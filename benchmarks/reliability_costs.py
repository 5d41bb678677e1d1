"""What the reliability checks of docs/reliability.md cost: the per-batch state check and the ImageNet header check.

    python benchmarks/reliability_costs.py [--quick] [--out DIR]

* State check (``bso_lightning.tasks.state_guard``, once per training batch): the guarded tensors of VGG-11
  (CIFAR-10) and ResNet-18 (ImageNet), the median time of one check (listing the tensors, one fused max-abs
  reduction, one host sync), and for scale the median time of one forward + backward of the same model at T = 1
  on a small batch.
* Header check (``datamodules.imagenet.check_image_headers``, once in ``setup``): images per second over N
  freshly written JPEGs (the page cache is warm: a cold network file system is slower).

Prints a Markdown table and writes ``reliability_costs.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from spikingjelly.activation_based import functional

from bso_lightning.models import build_model
from bso_lightning.nn.routing import split_parameters
from bso_lightning.tasks.state_guard import StateGuard, guarded_tensors
from datamodules.imagenet import CHECK_THREADS, check_image_headers


def _median_ms(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def state_check(arch: str, kwargs: dict, image: int, batch: int, reps: int) -> dict:
    model = build_model(arch, **kwargs)
    binary = split_parameters(model).binary
    named = guarded_tensors(model, binary)

    def check() -> None:
        StateGuard(guarded_tensors(model, binary)).check("benchmark")

    x = torch.rand(batch, kwargs["in_channels"], image, image)

    def step() -> None:
        functional.reset_net(model)
        model(x).sum().backward()
        model.zero_grad(set_to_none=True)

    return {"arch": arch, "tensors": len(named), "elements": sum(t.numel() for _, t in named),
            "check_ms": _median_ms(check, reps), "forward_backward_ms": _median_ms(step, max(2, reps // 10)),
            "batch": batch, "image": image}


def header_check(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        paths = []
        for i in range(n):
            path = Path(tmp) / f"{i}.JPEG"
            Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(path, quality=85)
            paths.append(str(path))
        start = time.perf_counter()
        check_image_headers(paths)
        seconds = time.perf_counter() - start
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds, "threads": CHECK_THREADS}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and images (for the tests)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for reliability_costs.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    reps = 5 if args.quick else 50
    states = [state_check("vgg11", {"num_classes": 10, "in_channels": 3}, 32, 8, reps)]
    if not args.quick:
        states.append(state_check("resnet18", {"num_classes": 1000, "in_channels": 3}, 128, 2, reps))
    headers = header_check(100 if args.quick else 2000)
    print("| model | guarded tensors | elements | state check (ms) | fwd+bwd at T=1 (ms, batch, size) |")
    print("|---|---|---|---|---|")
    for r in states:
        print(f"| {r['arch']} | {r['tensors']} | {r['elements']:,} | {r['check_ms']:.2f} | "
              f"{r['forward_backward_ms']:.0f} ({r['batch']}, {r['image']}×{r['image']}) |")
    print(f"\nImageNet header check: {headers['images']} JPEGs in {headers['seconds']:.2f} s = "
          f"{headers['images_per_s']:.0f} images/s ({headers['threads']} threads)")
    results = {"state_check": states, "header_check": headers, "torch_threads": torch.get_num_threads()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reliability_costs.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
