"""The main job and the comparison (a sweep with one seed), end to end on a tiny model (real TRL, PEFT,
lm-eval, analysis)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest


pytestmark = pytest.mark.slow

SMALL = [
    "--max-steps",
    "2",
    "--num-examples",
    "8",
    "--eval-limit",
    "2",
    "--num-fewshot",
    "1",
    "--max-gen-toks",
    "8",
    "--heldout",
    "3",
    "--analysis-prompts",
    "6",
    "--preset",
    "cpu",
]


@pytest.fixture(scope="module", autouse=True)
def tiny_base(tmp_path_factory):
    """A tiny random 10-layer Llama directory, given as --model (the package ships no test models)."""
    from midblock_plugin.testing import save_tiny

    path = save_tiny(tmp_path_factory.mktemp("tiny") / "tiny-base", "llama", num_layers=10, seed=0)
    SMALL[:0] = ["--model", str(path)]
    yield path
    del SMALL[:2]


def _midblock(*args):
    r = subprocess.run(
        [sys.executable, "-m", "midblock_plugin.cli", *args], capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _png(path: Path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def test_compare_writes_a_complete_report(tmp_path):
    out = tmp_path / "cmp"
    _midblock("compare", *SMALL, "--variants", "11111,01110", "--output-dir", str(out))
    report = (out / "report.md").read_text()
    for section in (
        "## Setup",
        "## Results",
        "## Against uniform and against the base",
        "## Forgetting",
        "## What is significant",
        "## Training loss",
        "## Per-layer drift",
        "## Layer-wise analysis",
    ):
        assert section in report
    assert "intervals need at least 3 seeds" in report  # one seed: no interval printed
    table = report.split("## Results")[1].split("## Against")[0]
    rows = [l for l in table.splitlines() if l.startswith("| `")]
    assert [r.split("|")[1].strip() for r in rows] == ["`11111`", "`01110`"]
    for (
        row
    ) in rows:  # every cell measured: lr, accuracy with stderr, n, loss (no interval: one seed), step time, memory
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[4]) == 5e-4
        assert re.fullmatch(r"\d\.\d{3} ± \d\.\d{3}", cells[5]) and re.fullmatch(r"\d\.\d{3} ± \d\.\d{3}", cells[6])
        assert cells[7] == "2" and re.fullmatch(r"\d+\.\d{4}", cells[8])
        assert float(cells[9]) > 0 and float(cells[10]) > 0
    results = json.loads((out / "results.json").read_text())
    uni, mid = results["variants"]
    assert uni["seeds"] == mid["seeds"] == 1 and uni["vs_uniform"]["mean_diff"] == 0.0
    assert mid["vs_uniform"]["ci95"] is None and mid["vs_uniform"]["significant"] is False
    assert results["validation_rows"] == 0 and results["heldout_rows"] == 3 and mid["best_lr"] == 5e-4
    for v in (uni, mid):  # GSM8K with stderr and n per variant; forgetting on the default general text
        g = v["gsm8k"]["strict-match"]
        assert g["n"] == 2 and g["stderr"] is not None and len(g["per_seed"]) == 1
        assert "pydoc_data" in v["forgetting"]["general_text"] and v["forgetting"]["kl"]["mean"] > 0
        assert v["forgetting"]["kl_at_uniform_gain"] is None  # one rate: nothing to interpolate over
    assert "one learning rate" in mid["forgetting"]["kl_at_uniform_gain_note"]
    # the paired per-question GSM8K test against uniform (every answer kept per question)
    assert {"mean_diff", "p_value", "p_holm", "significant"} <= set(mid["gsm8k"]["strict-match"]["vs_uniform"])
    assert len(mid["runs"][0]["gsm8k_correct"]["strict-match"]) == 2
    assert uni["layers"] == list(range(10)) and mid["layers"] == list(range(2, 8))  # L=10
    # same rank budget: rank sums equal up to the floor
    assert uni["rank"] * 10 == 160 and mid["rank"] == 160 // 6
    assert mid["trainable_params"] <= uni["trainable_params"]
    # per-layer drift is zero outside the window and positive inside
    assert all((mid["drift"].get(str(i), 0.0) > 0) == (2 <= i < 8) for i in range(10))
    for png in ("loss_curves.png", "drift.png", "heldout_loss.png", "gain_vs_forgetting.png", "analysis/analysis.png"):
        _png(out / png)
    assert "Recommended window: layers" in report or "No window is recommended" in report
    # the analysis ran on the comparison's uniform model, never on the window
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    assert analysis["tuned_variant"] == "11111" and results["analysis"]["reused_comparison_run"]
    eval_json = json.loads((out / "variant-01110" / "eval" / "gsm8k.json").read_text())
    assert eval_json["n_samples"] == 2 and eval_json["label"] == "final"
    assert set(eval_json["metrics"]) == {"strict-match", "flexible-extract"}
    assert eval_json["baseline"] is not None  # the untrained model's score sits beside the final one


def test_run_and_bad_input(tmp_path):
    out = tmp_path / "run"
    r = _midblock("run", *SMALL, "--output-dir", str(out), "--skip-eval")
    assert "report:" in r.stdout
    report = (out / "report.md").read_text()
    assert "| `01110` |" in report and "not run" in report  # eval skipped is said, not faked
    # `run` trains only its window, plus a uniform model for the analysis (a window-tuned model is never analysed)
    results = json.loads((out / "results.json").read_text())
    assert [v["mask"] for v in results["variants"]] == ["01110"]
    assert json.loads((out / "analysis" / "analysis.json").read_text())["tuned_variant"] == "11111"
    assert results["analysis"]["tuned_variant"] == "11111" and not results["analysis"]["reused_comparison_run"]
    assert (out / "analysis" / "model-11111" / "adapter").is_dir()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "midblock_plugin.cli",
            "compare",
            *SMALL,
            "--variants",
            "11111,0000",
            "--output-dir",
            str(tmp_path / "bad"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "segments='0000' activates no segment" in bad.stderr
    assert not (tmp_path / "bad" / "variant-11111").exists()  # rejected before any training
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "midblock_plugin.cli",
            "run",
            *SMALL,
            "--data-dir",
            str(tmp_path),
            "--output-dir",
            str(tmp_path / "bad2"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "train.jsonl and test.jsonl" in bad.stderr and "Traceback" not in bad.stderr
