"""benchmarks/gpu_check.py cannot rot while no GPU is at hand: its ``--smoke`` run (tiny sizes, CPU) goes through
every part and writes every figure; a failing part is recorded and the others still run; a machine without CUDA
gets a report that says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]


def _gpu_check():
    return load_benchmark("gpu_check")


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_smoke_run_writes_every_part(tmp_path):
    gpu_check = _gpu_check()
    data = gpu_check.main(["--smoke", "--threads", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    md = (tmp_path / "gpu_check.md").read_text()
    assert saved["finished"] and saved["device"] == "cpu" and saved["command"].startswith("python benchmarks/gpu")
    assert saved["machine"]["torch"] == torch.__version__ and saved["machine"]["cpu"]
    parts = saved["parts"]
    assert {name: p["status"] for name, p in parts.items()} == {
        "correctness": "passed", "memory": "measured", "throughput": "measured", "quickstart": "measured"}, parts
    for title in ("### a. Correctness", "### b. Peak memory", "### c. Throughput", "### d. Quick start"):
        assert title in md

    a = parts["correctness"]  # every variant against the CPU step, each with flips and identical results
    variants = {(c["optimizer"], c["storage"], c["momentum_dtype"], c["path"]) for c in a["cases"]}
    assert variants == {(o, s, m, p) for o in ("BSO", "TBSO") for s in ("dense", "packed")
                        for m in ("float32", "bfloat16") for p in ("eager", "compiled")} | {
        (o, s, "int8", p) for o, s in (("TBSO", "packed"), ("BSO", "dense")) for p in ("eager", "compiled")}
    assert all(c["same"] and c["flipped_fraction"] > 0 and c["device_work_per_step"] > 0 for c in a["cases"])
    assert a["tests"]["status"] == "skipped (no CUDA)" and a["tests"]["counts"]["skipped"] >= 4

    b = parts["memory"]  # 4 methods x T = 1, 2; BPTT grows with T, the online methods do not
    peak = {(r["method"], r["time_steps"]): r["train_peak_bytes"] for r in b["results"]}
    assert set(peak) == {(m, t) for m in ("bptt_latent", "ottt_fp", "bso", "tbso") for t in (1, 2)}
    assert peak["bptt_latent", 2] > 1.2 * peak["bptt_latent", 1]
    for method in ("ottt_fp", "bso", "tbso"):  # (T-BSO's state holds one more scalar per tensor and time step)
        assert abs(peak[method, 2] - peak[method, 1]) < 0.01 * peak[method, 1]
    assert len(b["callback_check"]) == 4 and all(c["agree"] for c in b["callback_check"])

    c = parts["throughput"]
    assert len(c["iterations"]) == len(gpu_check.THROUGHPUT_CONFIGS)
    assert all(r["images_per_s"] > 0 for r in c["iterations"])
    steps = {r["variant"]: r for r in c["step_alone"]}
    assert steps["SGD(momentum=0.9, foreach=True)"]["ratio_to_sgd_foreach"] == 1.0
    assert all(r["step_ms"] > 0 and r["device_work_per_step"] > 0 for r in steps.values())

    d = parts["quickstart"]
    assert 0 <= d["test_acc"] <= 100 and d["fit_test_s"] > 0 and "accelerator=cpu" in d["command"]
    assert data["parts"] == saved["parts"]


def test_a_failing_part_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    gpu_check = _gpu_check()

    def broken(part, ctx):
        part["notes"] = ["measured before the failure"]
        raise ValueError("a device error")

    monkeypatch.setattr(gpu_check, "part_memory", broken)
    monkeypatch.setattr(gpu_check, "part_throughput", lambda part, ctx: part.update(status="measured"))
    gpu_check.main(["--smoke", "--parts", "b", "c", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    memory = saved["parts"]["memory"]
    assert memory["status"] == "error" and memory["notes"] == ["measured before the failure"]
    assert "ValueError: a device error" in memory["error"] and "broken" in memory["error"]  # the traceback
    assert saved["parts"]["throughput"]["status"] == "measured"
    assert "ValueError: a device error" in (tmp_path / "gpu_check.md").read_text()


def test_the_global_deadline_stops_measuring_and_keeps_what_was_measured(tmp_path):
    saved = _gpu_check().main(["--smoke", "--parts", "a", "--no-tests", "--deadline", "0.01", "--out", str(tmp_path)])
    assert saved["finished"] and saved["parts"]["correctness"]["status"] == "incomplete"
    assert json.loads((tmp_path / "gpu_check.json").read_text())["parts"]["correctness"]["status"] == "incomplete"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without CUDA")
def test_no_cuda_device_gives_a_report_that_says_so(tmp_path):
    saved = _gpu_check().main(["--device", "cuda", "--out", str(tmp_path)])
    assert {p["status"] for p in saved["parts"].values()} == {"error"}
    assert "no CUDA device" in (tmp_path / "gpu_check.md").read_text()


def test_every_test_that_needs_cuda_is_marked_so_the_check_runs_it():
    files = _gpu_check().cuda_test_files()
    needs_cuda = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                        if "not torch.cuda.is_available()" in p.read_text() and p.name != "test_gpu_check.py")
    assert needs_cuda and files == needs_cuda  # (pytest -m cuda selects only marked tests)
    assert "tests/optim/test_no_sync.py" in files and "tests/optim/test_cuda_step.py" in files
