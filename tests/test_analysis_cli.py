"""``midblock analyze`` end to end on tiny models: files, figure, JSON contract, errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

from midblock_plugin.architecture import find_decoder_layers
from midblock_plugin.cli import main
from midblock_plugin.testing import save_tiny, tiny_model
from midblock_plugin.window import resolve_layers


L = 10
FAST = ["--num-prompts", "10", "--max-length", "24", "--batch-size", "4"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("analysis_cli")
    base = save_tiny(root / "base", arch="llama", num_layers=L)
    tuned = tiny_model("llama", num_layers=L)
    _, stack = find_decoder_layers(tuned)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a "fine-tune" that moved only the top two layers
        for i in (8, 9):
            for p in stack[i].parameters():
                p.add_(p.std() * torch.randn(p.shape, generator=g))
    tuned.save_pretrained(root / "tuned")
    peft_model = get_peft_model(
        tiny_model("llama", num_layers=L),
        LoraConfig(
            r=4,
            target_modules=["q_proj", "v_proj"],
            layers_to_transform=[8, 9],
            layers_pattern="layers",
            init_lora_weights=False,
        ),
    )
    peft_model.save_pretrained(root / "adapter")
    (root / "empty").mkdir()
    return {
        "base": str(base),
        "tuned": str(root / "tuned"),
        "adapter": str(root / "adapter"),
        "empty": str(root / "empty"),
    }


def _check_outputs(out_dir, num_layers):
    doc = json.loads((out_dir / "analysis.json").read_text())
    png = (out_dir / "analysis.png").read_bytes()
    assert png[:8] == PNG_MAGIC
    import matplotlib.image

    img = matplotlib.image.imread(str(out_dir / "analysis.png"))
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert float(img[..., :3].std()) > 0.01  # not a blank canvas
    with open(out_dir / "analysis.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == list(doc["columns"])
    assert len(table) == num_layers + 1
    assert [int(r[0]) for r in table[1:]] == list(range(num_layers))
    return doc


def test_pair_cli_writes_json_csv_png_and_a_window_plan_accepts(dirs, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["analyze", dirs["base"], dirs["tuned"], "--output-dir", str(out), *FAST])
    assert rc == 0
    stdout, stderr = capsys.readouterr()
    assert "recommended window: layers 8-9 of 10" in stdout
    assert "batch" in stderr  # the tqdm progress bar
    doc = _check_outputs(out, L)
    assert doc["schema"] == "midblock.analysis/2" and doc["mode"] == "pair" and doc["tuned_kind"] == "model"
    assert doc["tuned_variant"] == "full"
    assert doc["model"]["num_layers"] == L and doc["prompts"]["count"] == 10
    rec = doc["recommendation"]
    # only layers 8-9 were changed: their own change is the whole signal, so the window is 8-9 (mask 00001)
    assert rec["layers"] == [8, 9] and rec["signal_name"] == "own_output" and rec["captured_share"] == 1.0
    assert rec["num_layers"] == L and rec["window"] == "8-9" and rec["segments"] == "00001"
    assert isinstance(rec["rule"], str) and rec["heuristic"] is True
    assert doc["recommended_layers"] == [8, 9]
    assert resolve_layers(L, window_from=str(out / "analysis.json")) == rec["layers"]
    for row in doc["layers"][:8]:
        assert row["cka"] == pytest.approx(1.0, abs=1e-9) and row["weight_change"] == 0.0
        assert row["own_change"] == 0.0
    assert all(row["cka"] < 0.999 for row in doc["layers"][8:])


def test_adapter_cli_with_json_to_stdout(dirs, tmp_path, capsys):
    out = tmp_path / "ad"
    rc = main(["analyze", dirs["base"], dirs["adapter"], "--output-dir", str(out), "--json", "--quiet", *FAST])
    assert rc == 0
    stdout, stderr = capsys.readouterr()
    doc = json.loads(stdout)
    assert doc == json.loads((out / "analysis.json").read_text())
    assert "batch" not in stderr  # --quiet
    assert doc["tuned_kind"] == "adapter"
    assert [r["layer"] for r in doc["layers"] if r["weight_change_attn"] > 0] == [8, 9]
    assert [r["layer"] for r in doc["layers"] if r["own_change"] > 0] == [8, 9]
    # the adapter trains only layers 8-9: a window-tuned model gives no recommendation
    assert doc["tuned_variant"] == "00001" and doc["tuned_layers"] == [8, 9]
    assert doc["recommendation"]["layers"] == [] and "circular" in doc["recommendation"]["refused"]


def test_single_model_cli(dirs, tmp_path, capsys):
    out = tmp_path / "single"
    rc = main(["analyze", dirs["base"], "--output-dir", str(out), "--quiet", *FAST])
    assert rc == 0
    doc = _check_outputs(out, L)
    assert doc["mode"] == "single" and doc["tuned"] is None
    for col in (
        "adjacent_cka",
        "effective_rank",
        "dataset_entropy",
        "prompt_entropy",
        "curvature",
        "early_exit",
        "snr_attn",
        "snr_mlp",
    ):
        assert col in doc["columns"] and all(r[col] is not None for r in doc["layers"]), col
    rec = doc["recommendation"]
    # one model and no --probe: nothing measures what a fine-tune changes, so the paper default, flagged
    assert rec["signal_name"] == "none" and rec["fallback"] and rec["layers"] == resolve_layers(L)
    assert resolve_layers(L, window_from=str(out / "analysis.json")) == rec["layers"]
    assert "cka" not in doc["columns"]


def test_no_figure_and_no_optional_metrics(dirs, tmp_path):
    out = tmp_path / "lean"
    rc = main(
        [
            "analyze",
            dirs["base"],
            dirs["tuned"],
            "--output-dir",
            str(out),
            "--quiet",
            "--no-figure",
            "--no-early-exit",
            "--no-weight-stats",
            "--stats-dtype",
            "float32",
            *FAST,
        ]
    )
    assert rc == 0
    assert not (out / "analysis.png").exists()
    doc = json.loads((out / "analysis.json").read_text())
    assert not any(c.startswith(("early_exit", "weight_change")) for c in doc["columns"])
    assert doc["settings"]["stats_dtype"] == "float32"
    assert doc["recommendation"]["layers"] == [8, 9]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["/nonexistent/base"], "BASE '/nonexistent/base'"),
        (["{base}", "{empty}"], "adapter_config.json"),
        (["{base}", "/nonexistent/tuned"], "TUNED"),
        (["{base}", "--num-prompts", "1"], "--num-prompts=1"),
        (["{base}", "--batch-size", "0"], "--batch-size=0"),
        (["{base}", "--prompts", "/nonexistent/p.jsonl"], "'builtin', 'gsm8k', or a JSONL"),
        (["{base}", "--prompts", "gsm8k", "--data-dir", "/nonexistent"], "--data-dir"),
        (["{base}", "--device", "tpu"], "--device='tpu'"),
        (["{base}", "--prompts", "{badjsonl}"], "line 2"),
    ],
)
def test_bad_input_gives_a_clear_error(dirs, tmp_path, capsys, argv, needle):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"prompt": "no text key"}\n')
    argv = [a.format(base=dirs["base"], empty=dirs["empty"], badjsonl=bad) for a in argv]
    rc = main(["analyze", *argv, "--output-dir", str(tmp_path / "o"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "midblock analyze: error:" in err and needle in err
    assert not (tmp_path / "o").exists()


def test_mismatched_tuned_model_is_refused_before_loading(dirs, tmp_path, capsys):
    other = save_tiny(tmp_path / "other", arch="llama", num_layers=4)
    rc = main(["analyze", dirs["base"], str(other), "--output-dir", str(tmp_path / "o"), "--quiet"])
    assert rc == 2
    assert "BASE has 10 layers" in capsys.readouterr().err


def test_registering_the_subcommand_does_not_import_torch():
    code = (
        "import sys, midblock_plugin.cli as c; p = c.build_parser(); "
        "a = p.parse_args(['analyze', 'x', '--json']); assert a.func.__module__ == 'midblock_plugin.cli.analyze'; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
