"""benchmarks/real_data.py without the MNIST wheel: the arrays-only unpickler (datamodules.safe_files) and rebuilding results from a log."""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("benchmark_real_data", REPO / "benchmarks" / "real_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arrays_only_unpickler_reads_the_mnist_layout_and_refuses_code(tmp_path):
    real_data = _load()
    splits = tuple((np.random.default_rng(i).random((3, 784), dtype=np.float32), np.arange(3, dtype=np.int64))
                   for i in range(3))  # the wheel's layout: ((x, y) train, (x, y) validation, (x, y) test)
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(splits, f, protocol=2)
    with gzip.open(path) as f:
        loaded = real_data.load_arrays_pickle(f)
    np.testing.assert_array_equal(loaded[2][0], splits[2][0])

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    hostile = tmp_path / "hostile.pkl.gz"
    with gzip.open(hostile, "wb") as f:
        pickle.dump(Evil(), f)
    with gzip.open(hostile) as f, pytest.raises(pickle.UnpicklingError, match=r"os.system|posix.system.*only numpy arrays"):
        real_data.load_arrays_pickle(f)


def test_results_rebuilt_from_the_printed_lines(tmp_path):
    real_data = _load()
    log = tmp_path / "run.log"
    log.write_text("noise\n"
                   "  T-BSO                  seed=2: ep 0.4987: test 95.67 / train 91.68, ep 0.9974: test 96.46 / "
                   "train 94.29  [801 s]\n"
                   "  OTTT (full precision)  seed=0: ep 0.5: test 97.00 / train 95.00  [12 s]\n")
    runs = real_data.results_from_log(log)
    assert [(r["method"], r["seed"]) for r in runs] == [("tbso", 2), ("ottt_fp", 0)]
    assert runs[0]["curve"][1] == {"epoch": 0.9974, "test_acc": 96.46, "train_acc": 94.29}
    assert runs[0]["test_acc"] == 96.46 and runs[0]["seconds"] == 801.0
    (tmp_path / "empty.log").write_text("nothing here\n")
    with pytest.raises(SystemExit, match="no run lines"):
        real_data.results_from_log(tmp_path / "empty.log")
