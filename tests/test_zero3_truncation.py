"""Backward truncation under DeepSpeed ZeRO-3 (2 CPU processes, gloo), counted.

SFTTrainer + MidBlockCallback, mid-block LoRA on layers 2-4 of a 6-layer model, gradient
checkpointing (TRL makes it reentrant for PEFT + ZeRO-3), 2 SGD steps, once with backward
truncation and once with ``truncate_backward=False``. ``tests/zero3_truncation_worker.py``
counts per decoder layer, during the backward: checkpoint recomputes, gradients reaching
the layer, and ZeRO-3 parameter fetches. Truncated, the layers below the window do none
of these; untruncated, they do all of them; the gradients are bit-identical.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from midblock_plugin.testing import save_tiny


ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "zero3_truncation_worker.py"
WINDOW = [2, 3, 4]  # layers "2-4" of 6: layers 0 and 1 lie below the window, layer 5 above
COUNTERS = ("recompute", "grad", "ds_fetch", "ds_gathered")

pytestmark = pytest.mark.slow


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero3-truncation")
    model_dir = save_tiny(root / "model", "llama", num_layers=6, seed=7)
    out = root / "out"
    out.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(WORKER),
        "--model",
        str(model_dir),
        "--layers",
        "2-4",
        "--out",
        str(out),
        "--steps",
        "2",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    counts = [json.loads((out / f"counts.rank{rank}.json").read_text()) for rank in (0, 1)]
    grads = {run: torch.load(out / f"{run}.grads.pt") for run in ("truncated", "untruncated")}
    return counts, grads


def _per_layer(result, counter):
    return {int(k): v for k, v in result[counter].items()}


def test_setup_is_zero3_with_truncation_matching_the_mode_that_runs(runs):
    counts, _ = runs
    for rank_counts in counts:
        t, u = rank_counts["truncated"], rank_counts["untruncated"]
        for r in (t, u):
            # TRL asks for reentrant (PEFT + ZeRO-3) in the deprecated argument only: the layers run non-reentrant
            assert r["partitioned"] and r["use_reentrant"] is False
            assert r["window"] == WINDOW and r["num_layers"] == 6
            assert r["steps_with_grads"] == 2
        assert t["truncation_installed"] and t["removed_input_hooks"] >= 1
        assert t["truncation_reentrant"] is False  # the truncation matches the mode that runs
        assert not u["truncation_installed"]


@pytest.mark.parametrize("counter", COUNTERS)
def test_truncated_no_backward_below_the_window(runs, counter):
    counts, _ = runs
    for rank_counts in counts:
        c = _per_layer(rank_counts["truncated"], counter)
        assert all(c[i] == 0 for i in range(WINDOW[0])), (counter, c)
        assert all(c[i] > 0 for i in range(WINDOW[0], 6)), (counter, c)  # the window and above do run


@pytest.mark.parametrize("counter", COUNTERS)
def test_untruncated_runs_backward_below_the_window(runs, counter):
    """The control: without truncation the same counters see the layers below the window,
    so the test above would fail if truncation stopped working."""
    counts, _ = runs
    for rank_counts in counts:
        c = _per_layer(rank_counts["untruncated"], counter)
        assert all(c[i] > 0 for i in range(6)), (counter, c)
        if counter != "ds_gathered":  # (how much is gathered at a fetch depends on ZeRO-3's prefetching)
            t = _per_layer(rank_counts["truncated"], counter)
            # same work above the window's first layer; at that layer the truncated run also skips the
            # gradient of its input (nothing below trains), so ZeRO-3 fetches fewer submodules there
            assert all(c[i] == t[i] for i in range(WINDOW[0] + 1, 6)), (counter, c, t)
            assert t[WINDOW[0]] <= c[WINDOW[0]], (counter, c, t)


def test_counts_equal_on_both_ranks(runs):
    counts, _ = runs
    for run in ("truncated", "untruncated"):
        a, b = counts[0][run], counts[1][run]
        assert {k: v for k, v in a.items() if k != "rank"} == {k: v for k, v in b.items() if k != "rank"}


def test_gradients_and_losses_identical(runs):
    counts, grads = runs
    t, u = grads["truncated"], grads["untruncated"]
    assert len(t) == len(u) == 2
    for step_t, step_u in zip(t, u):
        assert step_t.keys() == step_u.keys() and step_t
        assert {int(k.split(".layers.")[1].split(".")[0]) for k in step_t} == set(WINDOW)
        for k in step_t:
            assert step_t[k].shape == step_u[k].shape and step_t[k].numel() > 0  # full gradients, not partitions
            assert torch.equal(step_t[k], step_u[k]), (k, (step_t[k] - step_u[k]).abs().max())
        assert any(g.abs().sum() > 0 for g in step_t.values())
    assert counts[0]["truncated"]["losses"] == counts[0]["untruncated"]["losses"]
    assert len(counts[0]["truncated"]["losses"]) == 2
