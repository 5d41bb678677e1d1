"""The report of ``benchmarks/gpu_check.py``: its constants, the md/json files (rewritten after every part) and the
markdown tables."""

from __future__ import annotations

import json
import threading
import traceback
from pathlib import Path
from typing import Any, Optional

import _common
from _common import METHODS, fmt_mib, markdown_table

NAME = "gpu_check"
PARTS = {"a": "correctness", "b": "memory", "c": "throughput", "d": "quickstart"}
#: The paper's training memory on CIFAR-10 (VGG-11, batch 128), from its memory figure.
PAPER_MEMORY = {"bptt_latent": "2.86 → 58.18 GB (grows with T)", "bso": "2.9 GB at every T",
                "tbso": "3.1 GB at every T", "ottt_fp": "—"}
CALLBACK_TOLERANCE = 0.02  # MemoryCallback's CUDA peak against the direct reading, relative
QUICKSTART_TARGET = 98.0


def memory_key(device: str) -> str:
    """The memory figure of part b: the CUDA allocator's peak, or (no CUDA) state + autograd-graph peak."""
    return "cuda_peak_bytes" if device == "cuda" else "train_peak_bytes"


class Report:
    """The md and json files, rewritten after every part (and at the deadline), so nothing measured is lost."""

    def __init__(self, out: Optional[Path], info: dict[str, Any], settings: dict[str, Any], device: str,
                 command: str) -> None:
        self.out, self.lock = out, threading.Lock()
        self.data: dict[str, Any] = {"command": command, "device": device, "machine": info, "settings": settings,
                                     "parts": {}, "total_seconds": None, "finished": False}

    def part(self, key: str) -> dict[str, Any]:
        return self.data["parts"].setdefault(PARTS[key], {"status": "not run"})

    def write(self) -> None:
        if self.out is None:
            return
        with self.lock:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / f"{NAME}.json").write_text(json.dumps(self.data, indent=2, default=str) + "\n")
            (self.out / f"{NAME}.md").write_text(render_markdown(self.data) + "\n")


def _fmt(value: Any, spec: str = "{:.3g}") -> str:
    return "—" if value is None else spec.format(value)


def _error_block(part: dict[str, Any]) -> list[str]:
    return ["", "Error:", "", "```", part["error"], "```"] if part.get("error") else []


def render_markdown(data: dict[str, Any]) -> str:
    info, device, parts = data["machine"], data["device"], data["parts"]
    gpu = info.get("gpu")
    lines = [f"## GPU check ({'GPU ' + gpu if gpu else 'no GPU: ' + device})", "",
             f"Machine: {_common.machine_line(info)}" + (
                 f"; driver {info.get('driver')}, CUDA runtime {info.get('cuda_runtime')}, cuDNN {info.get('cudnn')}, "
                 f"triton {info.get('triton')}, {info.get('gpu_memory_gib')} GiB" if gpu else ""), "",
             f"Command: `{data['command']}`", "",
             f"Total: {_fmt(data['total_seconds'], '{:.0f}')} s of a {data['settings']['deadline']:.0f} s deadline"
             + ("" if data["finished"] else " (not finished: the figures below are what was measured)") + ".", "",
             markdown_table(["part", "status", "seconds"],
                            [[f"{k}. {name}", parts.get(name, {}).get("status", "not run"),
                              _fmt(parts.get(name, {}).get("seconds"), "{:.0f}")] for k, name in PARTS.items()])]
    a = parts.get("correctness")
    if a is not None:
        lines += ["", "### a. Correctness: the device step against the eager CPU step", "",
                  "Same weights, gradients and rounding noise; `same` = identical weights and flip counts at every "
                  "step, momentum within the tolerance (relative to max |M|), and some flips."
                  + (" `syncs` = host syncs per steady-state step (set_sync_debug_mode), `work` = device kernels + "
                     "copies per step (torch.profiler)." if device == "cuda" else
                     " No CUDA: `syncs` not measured, `work` = aten ops per step."), ""]
        if a.get("cases"):
            lines.append(markdown_table(
                ["optimizer", "storage", "momentum", "path", "flipped", "weights differing", "momentum rel. diff",
                 "first step s", "syncs", "work", "same"],
                [[c["optimizer"], c["storage"], c["momentum_dtype"], c["path"], f"{100 * c['flipped_fraction']:.1f}%",
                  c["weights_differing"], f"{c['momentum_max_rel_diff']:.1e}", f"{c['first_step_s']:.2f}",
                  _fmt(c["host_syncs_per_step"], "{}"), c["device_work_per_step"], "yes" if c["same"] else "NO"]
                 for c in a["cases"]]))
        tests = a.get("tests")
        if tests:
            lines += ["", f"`cuda`-marked tests: **{tests.get('status')}** — {tests.get('summary', '')} "
                          f"(`{tests.get('command', '')}`)"]
            if tests.get("output_tail"):
                lines += ["", "```", tests["output_tail"], "```"]
        lines += [f"- {n}" for n in a.get("notes", [])] + _error_block(a)
    b = parts.get("memory")
    if b is not None:
        lines += ["", "### b. Peak memory of one training iteration against T", "",
                  f"Setting: {b.get('setting', '—')}. Figure: {b.get('figure', '—')}.", ""]
        rows = b.get("results", [])
        key = memory_key(device)
        ts = sorted({r["time_steps"] for r in rows})
        if rows:
            def cell(m, t):
                r = next((r for r in rows if r["method"] == m and r["time_steps"] == t), None)
                return fmt_mib(r[key]) if r else "—"
            lines.append(markdown_table(["method", *(f"T={t} (MiB)" for t in ts), "paper"],
                                        [[METHODS[m], *(cell(m, t) for t in ts), PAPER_MEMORY[m]] for m in METHODS]))
        if b.get("callback_check"):
            lines += ["", f"`MemoryCallback` (a run of its own) against the direct reading (tolerance "
                          f"{100 * CALLBACK_TOLERANCE:.0f}%):", "",
                      markdown_table(["method", "T", "direct (MiB)", "MemoryCallback (MiB)", "rel. diff", "agree"],
                                     [[METHODS[c["method"]], c["time_steps"], fmt_mib(c["direct"]),
                                       fmt_mib(c["callback"]), _fmt(c["rel_diff"], "{:.2%}"),
                                       "yes" if c["agree"] else "NO"] for c in b["callback_check"]])]
        lines += [f"- {n}" for n in b.get("notes", [])] + _error_block(b)
    c = parts.get("throughput")
    if c is not None:
        lines += ["", "### c. Throughput", "", f"Training iterations: {c.get('setting', '—')}.", ""]
        if c.get("iterations"):
            lines.append(markdown_table(
                ["configuration", "images/s", "iteration ms", "first iteration s"],
                [[r["config"], _fmt(r.get("images_per_s"), "{:,.0f}"), _fmt(r.get("iteration_ms"), "{:.1f}"),
                  _fmt(r.get("first_iteration_s"), "{:.1f}") if "error" not in r else r["error"]]
                 for r in c["iterations"]]))
        if c.get("step_alone"):
            lines += ["", "The optimizer step alone on the binary weights (same gradients; median ms per step; "
                          + ("device kernels + copies per step" if device == "cuda" else "aten ops per step") + "):",
                      "", markdown_table(["step", "ms", "÷ SGD foreach", "work per step"],
                                         [[r["variant"], _fmt(r.get("step_ms"), "{:.3f}"),
                                           _fmt(r.get("ratio_to_sgd_foreach"), "{:.2f}×"),
                                           r.get("device_work_per_step", r.get("error", "—"))]
                                          for r in c["step_alone"]])]
        lines += _error_block(c)
    d = parts.get("quickstart")
    if d is not None:
        lines += ["", "### d. Quick start on the device", "", f"`{d.get('command', '—')}`: fit + test "
                  f"{_fmt(d.get('fit_test_s'), '{:.1f}')} s, whole command {_fmt(d.get('command_s'), '{:.1f}')} s, "
                  f"test accuracy {_fmt(d.get('test_acc'), '{:.2f}')}% (target ≥ {QUICKSTART_TARGET:.0f}%: "
                  f"{'reached' if d.get('reaches_target') else 'not reached' if 'reaches_target' in d else '—'})."]
        lines += _error_block(d)
    return "\n".join(lines)


def error_summary(error: BaseException) -> str:
    """The exception and the last frames of its traceback (enough to find the line, short enough for the md)."""
    frames = traceback.format_exception(type(error), error, error.__traceback__)
    text = "".join(frames)
    return text if len(text) < 4000 else text[:1200] + "\n[...]\n" + text[-2600:]
