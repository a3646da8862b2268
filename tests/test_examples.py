"""The TRL example script, end to end, as a user runs it."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from midblock_plugin.testing import GSM8K_DIR


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "trl" / "sft_midblock.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_example_trains_and_saves_a_midblock_adapter(tmp_path):
    out = tmp_path / "run"
    r = run(
        "--model",
        "tiny",
        "--data",
        str(GSM8K_DIR / "train.jsonl"),
        "--num-examples",
        "8",
        "--segments",
        "01110",
        "--rank",
        "8",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--gradient-checkpointing",
        "--output-dir",
        str(out),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == [1, 2, 3, 4, 5]  # L=8, mask 01110
    assert cfg["r"] == 12  # floor(8 * 8 / 5)
    assert (out / "adapter_model.safetensors").stat().st_size > 0
    card = (out / "README.md").read_text()  # the model card says what midblock trained
    assert "Mid-Block Efficient Tuning (midblock)" in card and "layers 1-5 of 8" in card
    assert "window         layers 1-5" in r.stderr
    assert r.stderr.count("gradient checkpointing: non-reentrant (the default)") == 1  # midblock's choice, said once
    drift = json.loads((out / "midblock" / "drift.json").read_text())
    assert drift["history"][-1]["step"] == 2
    status = json.loads((out / "midblock-run.json").read_text())
    assert status["status"] == "complete" and status["plan"] == "layers 1-5 of 8, lora rank 12 per layer"
    assert status["finished"] >= status["started"]


def test_example_refuses_a_directory_trained_with_another_plan_unless_overwrite(tmp_path):
    """Two example runs into one --output-dir with different windows: the second is refused before any
    weights load, naming both plans and --overwrite; with --overwrite it replaces the first run."""
    out = tmp_path / "run"
    common = ["--data", str(GSM8K_DIR / "train.jsonl"), "--max-steps", "1", "--batch-size", "2", "--rank", "8"]
    assert run(*common, "--segments", "01110", "--output-dir", str(out)).returncode == 0
    first = (out / "adapter_model.safetensors").read_bytes()
    r = run(*common, "--segments", "11111", "--output-dir", str(out))
    assert r.returncode == 2, r.stderr[-3000:]
    assert "layers 1-5 of 8" in r.stderr and "layers 0-7 of 8" in r.stderr and "--overwrite" in r.stderr
    assert "Traceback" not in r.stderr and "Tokenizing" not in r.stderr  # refused before the data and model
    assert (out / "adapter_model.safetensors").read_bytes() == first
    r = run(*common, "--segments", "11111", "--output-dir", str(out), "--overwrite")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "adapter_config.json").read_text())["layers_to_transform"] == list(range(8))
    status = json.loads((out / "midblock-run.json").read_text())
    assert status["status"] == "complete" and status["plan"].startswith("layers 0-7 of 8")


def test_example_full_mode_with_chat_data(tmp_path):
    data = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i}+{i}?"}, {"role": "assistant", "content": str(2 * i)}]}
        for i in range(6)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "full"
    r = run(
        "--data",
        str(data),
        "--mode",
        "full",
        "--layers",
        "2-5",
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--output-dir",
        str(out),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "model.safetensors").exists()
    plan = json.loads((out / "midblock" / "plan.json").read_text())
    assert plan["mode"] == "full" and plan["layers"] == [2, 3, 4, 5]


def test_example_bad_window_fails_before_any_work(tmp_path):
    out = tmp_path / "never"
    r = run("--data", str(GSM8K_DIR / "train.jsonl"), "--window", "0.8:0.2", "--output-dir", str(out))
    assert r.returncode != 0
    assert "--window '0.8:0.2'" in r.stderr and "0 <= a < b <= 1" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    r = run("--data", str(tmp_path / "missing.jsonl"), "--output-dir", str(out))
    assert r.returncode != 0 and "--data" in r.stderr and "does not exist" in r.stderr


def _example_module():
    spec = importlib.util.spec_from_file_location("sft_midblock_example_ckpt", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_reentrant_needs_checkpointing(tmp_path, capsys):
    ex = _example_module()
    out = tmp_path / "never"
    assert ex.main(["--data", str(GSM8K_DIR / "train.jsonl"), "--output-dir", str(out), "--reentrant"]) == 2
    assert (
        "--reentrant chooses the gradient checkpointing mode; add --gradient-checkpointing" in capsys.readouterr().err
    )
    assert not out.exists()


def test_example_evaluation_flags_are_checked_before_any_work(tmp_path, capsys):
    """--eval-backend vllm without vLLM, and a protocol contradiction, exit 2 naming the flag."""
    import importlib.util as util

    ex = _example_module()
    out = tmp_path / "never"
    base = ["--data", str(GSM8K_DIR / "train.jsonl"), "--output-dir", str(out), "--eval-limit", "2"]
    if util.find_spec("vllm") is None:
        assert ex.main([*base, "--eval-backend", "vllm"]) == 2
        assert "midblock-plugin[vllm]" in capsys.readouterr().err
    assert ex.main([*base, "--eval-protocol", "paper", "--eval-fewshot", "5"]) == 2
    err = capsys.readouterr().err
    assert "--eval-protocol" in err or "protocol='paper'" in err
    assert "--eval-fewshot" in err and not out.exists()


def test_example_reads_and_tokenizes_only_the_rows_its_steps_train_on(tmp_path):
    """--max-steps 3 at batch 2 and no --num-examples: 6 rows of GSM8K's 7,473 are tokenized, one epoch."""
    import re

    out = tmp_path / "steps"
    r = run(
        "--data", str(GSM8K_DIR / "train.jsonl"), "--max-steps", "3", "--batch-size", "2", "--output-dir", str(out)
    )
    assert r.returncode == 0, r.stderr[-3000:]
    totals = {int(n) for n in re.findall(r"Tokenizing train dataset:[^\n\r]*?\| *\d+/(\d+)", r.stderr)}
    assert totals == {6}, totals
    epochs = re.findall(r"'epoch': '?([0-9.]+)", r.stdout + r.stderr)
    assert epochs and float(epochs[-1]) == 1.0  # the 3 steps are exactly one pass over the rows read
    assert (out / "adapter_model.safetensors").exists()
