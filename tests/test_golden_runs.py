"""Short training runs give the numbers recorded before the refactor of issue 22 (``tests/golden/runs.json``).

The binary weights must match bit for bit (a flip is a flip on every CPU); every other tensor to a relative
1e-4 of its sum and absolute sum (float rounding may differ in the last bit between CPUs). Bit-for-bit on one
machine: ``python tests/golden/make_golden.py --check``.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.golden.make_golden import CASES, GOLDEN, run_case

GOLDEN_RUNS = json.loads(GOLDEN.read_text())


def _is_binary_weight(name: str) -> bool:
    return name.startswith("model.") and (name.endswith(".weight_bits") or name in {"model.model.3.weight",
                                                                                     "model.model.7.weight"})


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_run_matches_the_recording(case: str) -> None:
    recorded, now = GOLDEN_RUNS[case], run_case(CASES[case])
    assert sorted(now) == sorted(recorded), "the state's names changed"
    for name, expected in recorded.items():
        got = now[name]
        assert (got["dtype"], got["shape"]) == (expected["dtype"], expected["shape"]), name
        if _is_binary_weight(name):
            assert got["sha256"] == expected["sha256"], f"{name}: other binary weights (another flip)"
            continue
        scale = max(expected["abs_sum"], 1e-30)
        for key in ("sum", "abs_sum"):
            assert math.isclose(got[key], expected[key], rel_tol=1e-4, abs_tol=1e-4 * scale), (name, key)
