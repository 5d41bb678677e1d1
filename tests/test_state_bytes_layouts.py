"""benchmarks/state_bytes.py counts every byte the binary optimizer keeps between steps, per layout: 1-bit weights,
4 / 2 / 1 + 4/256 momentum bytes, no step buffers and no binary gradient left between steps."""

import argparse

import pytest
from tests.conftest import load_benchmark


def _state_bytes():
    return load_benchmark("state_bytes")


@pytest.mark.parametrize("momentum_dtype, momentum_bytes", [("float32", 4.0), ("bfloat16", 2.0), ("int8", 1.0)])
def test_layouts_count_weights_momentum_and_nothing_left_over(momentum_dtype, momentum_bytes):
    module = _state_bytes()
    args = argparse.Namespace(arch="small_cnn", width=8, num_classes=10, image_size=16, time_steps=2)
    result = module.measure_layout("tbso", dict(weight_storage="packed", momentum_dtype=momentum_dtype), args)
    n, counted = result["binary_weights"], result["bytes"]
    assert counted["weights"] == pytest.approx(n / 8, abs=8)
    assert counted["momentum"] == n * momentum_bytes
    assert counted["momentum_scale"] == (pytest.approx(n / 256 * 4, abs=4 * 3) if momentum_dtype == "int8" else 0)
    assert counted["workspaces"] == 0 and counted["gradients"] == 0  # freed after each step / inside the backward
    assert (counted["rounding_noise"] > 0) == (momentum_dtype != "float32")
    assert counted["v"] > 0 and counted["counters"] > 0
    assert result["bytes_per_weight"] == pytest.approx(sum(counted.values()) / n)
