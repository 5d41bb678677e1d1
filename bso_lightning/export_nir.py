"""Command line: the network of an ``OnlineClassifier`` checkpoint as a NIR graph (docs/deploying.md).

    python -m bso_lightning.export_nir CKPT OUT.nir --input-shape 3 32 32 [--dt 1e-4] [--batchnorm fold]
"""

from __future__ import annotations

import sys
from typing import Optional

from bso_lightning.export import checkpoint_parser
from bso_lightning.interop.nir import DEFAULT_DT, export_checkpoint_nir, read_nir


def main(argv: Optional[list[str]] = None) -> int:
    parser = checkpoint_parser("python -m bso_lightning.export_nir", "Export the network of an OnlineClassifier "
                               "checkpoint to NIR (read it with nir.read or bso_lightning.interop.nir.import_nir).",
                               "output .nir file")
    parser.add_argument("--input-shape", type=int, nargs=3, required=True, metavar=("C", "H", "W"),
                        help="one input sample's shape (e.g. 3 32 32 for CIFAR, 2 48 48 for CIFAR10-DVS)")
    parser.add_argument("--dt", type=float, default=DEFAULT_DT, help=f"seconds per time step (default {DEFAULT_DT})")
    parser.add_argument("--batchnorm", choices=("separate", "fold"), default="separate",
                        help="separate: binary weights stay ±1, BatchNorm a 1x1 conv node; fold: into the conv")
    args = parser.parse_args(argv)
    try:
        size = export_checkpoint_nir(args.checkpoint, args.out, args.input_shape, dt=args.dt, batchnorm=args.batchnorm)
    except (ValueError, OSError) as exc:  # (OSError: a full disk, a folder that cannot be written)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    graph = read_nir(args.out)
    print(f"wrote {args.out}: {size} bytes, {len(graph.nodes)} NIR nodes, dt = {args.dt} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
