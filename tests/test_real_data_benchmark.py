"""benchmarks/real_data.py without the MNIST wheel: the arrays-only unpickler (datamodules.safe_files) and rebuilding results from a log."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
from tests.conftest import load_benchmark


def _load():
    return load_benchmark("real_data")


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


def _cell(row, method, seed, test, train, running_bn=50.0, flips=None):
    return {"row": row, "method": method, "seed": seed, "test_acc": test, "test_acc_running_bn": running_bn,
            "train_acc": train, "flips_final": flips, "seconds": 10.0, "curve": []}


def test_matrix_rebuilt_from_the_log_with_per_row_verdicts(tmp_path):
    import json

    real_data = _load()
    log = tmp_path / "matrix.jsonl"
    cells = [_cell("mnist28-w16-e1", "tbso", 0, 95.0, 91.0, flips=0.002), _cell("mnist28-w16-e1", "tbso", 1, 96.0, 92.0),
             _cell("mnist28-w16-e1", "ottt_fp", 0, 97.5, 95.0), _cell("mnist28-w16-e1", "bso", 0, 80.0, 90.0),
             _cell("digits16-w16-e8", "tbso", 0, 98.0, 97.0)]
    log.write_text("a line that is not a cell\n" + "\n".join(json.dumps(c) for c in cells + cells[:1]) + "\n")
    read = real_data.read_log([log])
    assert read == cells  # (the cell logged twice counts once)
    table, verdicts, summary = real_data.summarise(read, ["mnist28-w16-e1", "digits16-w16-e8"], ["tbso", "bso", "ottt_fp"])
    assert summary["mnist28-w16-e1"]["tbso"] == {"test": 95.5, "min": 95.0, "gap": -4.0, "n": 2}
    tbso_line = next(line for line in table.splitlines() if "mnist28-w16-e1" in line and "| T-BSO " in line)
    assert "95.50 ± 0.71" in tbso_line and "0.200%" in tbso_line  # mean ± std over the seeds; flips/final
    assert any("T-BSO − OTTT-FP -2.00 points (goal ≥ −2: met)" in v for v in verdicts)
    assert any("BSO − OTTT-FP -17.50 points (goal ≥ −2: MISSED)" in v for v in verdicts)
    assert any("BSO test is 10.00 points below its running training accuracy" in v for v in verdicts)
    assert not any(v.startswith("- digits16") for v in verdicts)  # no OTTT-FP cell there: no verdict
    compact = real_data.compact_table(read, ["mnist28-w16-e1", "digits16-w16-e8"], ["tbso", "bso", "ottt_fp"])
    row = next(line for line in compact.splitlines() if line.startswith("| mnist28"))
    assert "95.50 (min 95.00, 2)" in row and "MISSED (worst binary − OTTT-FP -17.50; max train − test +10.00)" in row
    assert "| —" in next(line for line in compact.splitlines() if line.startswith("| digits16"))
    (tmp_path / "empty.jsonl").write_text("nothing here\n")
    with pytest.raises(SystemExit, match="no cells"):
        real_data.read_log([tmp_path / "empty.jsonl"])


@pytest.mark.parametrize("name, expected", [("mnist28-w16-e1", {"data": "mnist", "image_size": 28, "width": 16,
                                                                  "epochs": 1}),
                                            ("digits16-w32-e8", {"data": "digits", "image_size": 16, "width": 32,
                                                                 "epochs": 8})])
def test_rows_parse_and_bad_rows_are_refused(name, expected):
    real_data = _load()
    assert real_data.parse_row(name) == expected
    for bad in ("mnist28-w16", "cifar32-w16-e1", "mnist56-w16-e1"):
        with pytest.raises(SystemExit, match="row"):
            real_data.parse_row(bad)
