"""Every benchmark script runs in ``--quick`` mode, prints its table, writes its files, and shows its effect."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
METHOD_LABELS = {"bptt_latent": "BPTT (latent weights)", "ottt_fp": "OTTT (full precision)", "bso": "BSO",
                 "tbso": "T-BSO"}  # benchmarks/_common.py METHODS, as the tables print them


def _load(name: str):
    return load_benchmark(name)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # --quick runs with 1 torch thread; give the suite its setting back
    yield
    torch.set_num_threads(threads)


def test_memory_vs_timesteps_quick(tmp_path, capsys):
    results = _load("memory_vs_timesteps").main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| method" in out and "T=1" in out and "T=2" in out
    assert (tmp_path / "memory_vs_timesteps.png").stat().st_size > 0
    assert json.loads((tmp_path / "memory_vs_timesteps.json").read_text())["results"]
    graph = {(r["method"], r["time_steps"]): r["graph_peak_bytes"] for r in results}
    assert graph["bptt_latent", 2] > 1.5 * graph["bptt_latent", 1]  # BPTT keeps every step's graph
    for method in ("bso", "tbso", "ottt_fp"):  # online methods free the graph after every step
        assert graph[method, 2] == graph[method, 1]


def test_memory_worker_runs_in_a_fresh_process():
    cmd = [sys.executable, str(BENCHMARKS / "memory_vs_timesteps.py"), "--worker", "--methods", "tbso",
           "--time-steps", "2", "--arch", "small_cnn", "--width", "4", "--batch-size", "2", "--image-size", "8",
           "--steps", "1", "--device", "cpu", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["method"] == "tbso" and result["time_steps"] == 2
    assert result["train_peak_bytes"] == result["state_bytes"] + result["graph_peak_bytes"] > 0


def test_step_throughput_quick(tmp_path, capsys):
    data = _load("step_throughput").main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "time ÷ ours" in out and "time ÷ SGD" in out and "run-twice" in out
    assert data["max_grad_rel_diff"] < 1e-3  # the three implementations compute the same gradients
    assert set(data["optimizer_median"]) == {"BSO", "T-BSO", "SGD", "BSO (packed)", "T-BSO (packed)",
                                             "T-BSO (packed, bf16 momentum)", "T-BSO (packed, int8 momentum)"}
    # every reported ratio is the median of the per-repetition ratios of the CPU times it recorded (3 in --quick)
    times, ratios = data["step_cpu_seconds"], data["step_ratio_to_ours"]
    assert set(ratios) == set(times) == {f"{o}/{p}" for o in ("bso", "tbso") for p in ("ours", "run_twice", "spikingjelly")}
    for key, ratio in ratios.items():
        ours = times[f"{key.split('/')[0]}/ours"]
        assert len(times[key]) == 3 and all(t > 0 for t in times[key])
        assert ratio == pytest.approx(statistics.median(a / b for a, b in zip(times[key], ours)), rel=1e-12)
        assert f"{ratio:.2f}×" in out
    for key, ratio in data["optimizer_ratio_to_sgd"].items():
        sgd = data["optimizer_cpu_seconds"]["SGD"]
        assert ratio == pytest.approx(statistics.median(a / b for a, b in zip(data["optimizer_cpu_seconds"][key], sgd)))
    assert (tmp_path / "step_throughput.md").read_text().strip() in out


def test_accuracy_quick(tmp_path, capsys):
    results = _load("accuracy").main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "T=1 test %" in out and "±" in out
    assert {r["method"] for r in results} == {"bptt_latent", "ottt_fp", "bso", "tbso"}
    # the printed table and the result file report exactly the runs' figures
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    for r in results:
        assert f"| {r['test_acc']:.2f} ± 0.00 " in rows[METHOD_LABELS[r["method"]]]
        assert f"| {r['train_acc']:.2f} ± 0.00 " in rows[METHOD_LABELS[r["method"]]]
    figures = lambda rs: [(r["method"], r["time_steps"], r["seed"], r["test_acc"], r["train_acc"]) for r in rs]  # noqa: E731
    assert figures(json.loads((tmp_path / "accuracy.json").read_text())["results"]) == figures(results)


def test_accuracy_parallel_runs_give_the_same_results(tmp_path):
    accuracy = _load("accuracy")
    args = ["--quick", "--methods", "bso", "tbso", "--seeds", "0"]  # two runs: one per worker process
    serial = accuracy.main(args)
    parallel = accuracy.main([*args, "--jobs", "2"])  # two spawned processes
    key = lambda r: (r["method"], r["time_steps"], r["seed"])  # noqa: E731
    assert [key(r) for r in parallel] == [key(r) for r in serial]
    assert [r["test_acc"] for r in parallel] == [r["test_acc"] for r in serial]


def test_state_bytes_quick(tmp_path, capsys):
    from bso_lightning.models import build_model, model_size_bytes

    results = {r["method"]: r for r in _load("state_bytes").main(["--quick", "--out", str(tmp_path)])}
    out = capsys.readouterr().out
    assert "B / hidden weight" in out
    assert results["bptt_latent"]["bytes_per_hidden_weight"] == pytest.approx(12.0, rel=1e-3)  # latent + Adam's two moments
    assert results["ottt_fp"]["bytes_per_hidden_weight"] == pytest.approx(8.0, rel=1e-3)  # weight + SGD momentum
    for method in ("bso", "tbso"):  # 1-bit weight (the default) + float32 momentum (+ counters, T-BSO's T scalars)
        assert 4.125 <= results[method]["bytes_per_hidden_weight"] < 4.2
    assert results["bso"]["deployed_bytes"] == model_size_bytes(build_model("small_cnn", width=8, in_channels=3))
