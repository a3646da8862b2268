"""``midblock export``: every target reproduces the original adapter's logits (float32, 1e-5) on a
tiny Llama, and the per-engine transformations are the ones the engines need:

* tgi / lorax: tensors for every layer and target module, zeros outside the window, no
  ``layers_to_transform`` (TGI's ``prepare_weights`` and LoRAX's ``LoraWeights.load`` drop a
  module type when one layer lacks it);
* sglang / llama.cpp: rsLoRA folded into alpha (they scale by ``alpha / r``);
* vllm: the ``--max-lora-rank`` to pass;
* merged: PEFT's merge, sharded safetensors, tokenizer, the asked dtype.

The targets are one table (``midblock_plugin.export.targets.TARGETS``): the command's choices and
help, the docs and the pipeline read it, and a target registered in it alone exports end to end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from midblock_plugin.config import MidBlockConfig
from midblock_plugin.export import REPORT_JSON, targets
from midblock_plugin.export.pipeline import export_adapter
from midblock_plugin.export.targets import TARGETS, ExportTarget
from midblock_plugin.plan import build_plan
from midblock_plugin.testing import save_tiny
from tests.source_scan import string_literals


WINDOW = [1, 2, 3]
NUM_LAYERS = 5
MODULES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]


def _make_adapter(root, use_rslora=True):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = save_tiny(root / "base", "llama", num_layers=NUM_LAYERS)
    model = AutoModelForCausalLM.from_pretrained(base)
    plan = build_plan(model, MidBlockConfig(rank=8, use_rslora=use_rslora, lora_dropout=0.0))
    assert plan.layers == WINDOW and plan.layer_rank == 13
    peft_model = get_peft_model(model, plan.lora_config())
    torch.manual_seed(1)
    with torch.no_grad():  # a trained adapter: lora_B no longer zero
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    peft_model.save_pretrained(root / "adapter")
    return base, root / "adapter"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return _make_adapter(root)


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def _logits_through_peft(base, adapter_dir, ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(adapter_dir)
    )
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


@pytest.mark.parametrize("target", list(TARGETS))
def test_every_target_reproduces_the_original_logits(adapter, tmp_path, target):
    base, src = adapter
    lines = []
    report = export_adapter(src, target, tmp_path / target, log=lines.append)
    assert report["passed"], report["checks"]
    for check in report["checks"]:
        assert check["max_abs_diff"] <= 1e-5
        assert check["adapter_effect"] > 1e-3  # the check is not vacuous: the adapter moves the logits
    assert any("max |logit difference|" in line for line in lines)
    written = json.loads((tmp_path / target / REPORT_JSON).read_text())
    assert written["passed"] and written["target"] == target and written["command"]


@pytest.mark.parametrize("target", ["tgi", "lorax"])
def test_tgi_lorax_cover_every_layer_with_zeros_outside_the_window(adapter, tmp_path, target):
    base, src = adapter
    export_adapter(src, target, tmp_path / target, log=lambda _: None)
    original, padded = _tensors(src), _tensors(tmp_path / target)
    cfg = json.loads((tmp_path / target / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] is None and cfg["layers_pattern"] is None and cfg["r"] == 13
    for i in range(NUM_LAYERS):
        for m in MODULES:
            for ab in ("lora_A", "lora_B"):
                key = f"base_model.model.model.layers.{i}.{m}.{ab}.weight"
                assert key in padded, key
                if i in WINDOW:
                    assert torch.equal(padded[key], original[key])
                else:
                    assert not padded[key].any() and padded[key].shape[1 if ab == "lora_B" else 0] == 13
    assert len(padded) == NUM_LAYERS * len(MODULES) * 2


@pytest.mark.parametrize("target", ["sglang", "llama.cpp"])
def test_rslora_folding_changes_nothing_through_peft(adapter, tmp_path, target):
    """Independently of the export's own check: PEFT loads the folded adapter (plain alpha/r) and
    gives the logits of the rsLoRA original (alpha/sqrt(r))."""
    base, src = adapter
    export_adapter(src, target, tmp_path / target, log=lambda _: None)
    before = json.loads((src / "adapter_config.json").read_text())
    after = json.loads((tmp_path / target / "adapter_config.json").read_text())
    assert before["use_rslora"] is True and after["use_rslora"] is False
    assert after["lora_alpha"] == pytest.approx(before["lora_alpha"] * math.sqrt(13))
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 64]])
    ref, got = _logits_through_peft(base, src, ids), _logits_through_peft(base, tmp_path / target, ids)
    assert float((got - ref).abs().max()) <= 1e-5
    # without the fold (use_rslora dropped, alpha kept), the engines' alpha/r would be wrong:
    wrong = dict(before, use_rslora=False)
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "adapter_config.json").write_text(json.dumps(wrong))
    (tmp_path / "wrong" / "adapter_model.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
    assert float((_logits_through_peft(base, tmp_path / "wrong", ids) - ref).abs().max()) > 1e-3


def test_vllm_advice_is_written_beside_the_adapter(adapter, tmp_path):
    base, src = adapter
    lines = []
    export_adapter(src, "vllm", tmp_path / "v", log=lines.append)
    report = json.loads((tmp_path / "v" / REPORT_JSON).read_text())
    assert report["vllm"]["max_lora_rank"] == 16 and report["vllm"]["layers_with_lora"] == WINDOW
    assert "--max-lora-rank 16" in report["command"] and "--enable-lora" in report["command"]
    assert any("pass --max-lora-rank 16" in line and "on all 5 layers" in line for line in lines)
    # vLLM reads the PEFT adapter as it is (it zero-fills missing layers): the tensors are unchanged
    assert _tensors(tmp_path / "v").keys() == _tensors(src).keys()


def test_llamacpp_export_holds_what_its_converter_reads(adapter, tmp_path):
    """convert_lora_to_gguf.py (ggml-org/llama.cpp) reads lora_alpha from adapter_config.json and
    only *.lora_A.weight / *.lora_B.weight pairs, mapped to base tensor names by stripping
    'base_model.model.'; llama.cpp then scales by alpha / rank (no rsLoRA)."""
    from transformers import AutoModelForCausalLM

    from midblock_plugin.export.targets import check_llamacpp_readable

    base, src = adapter
    report = export_adapter(src, "llama.cpp", tmp_path / "l", log=lambda _: None)
    tensors = _tensors(tmp_path / "l")
    cfg = json.loads((tmp_path / "l" / "adapter_config.json").read_text())
    names = {n for n, _ in AutoModelForCausalLM.from_pretrained(base).named_parameters()}
    assert check_llamacpp_readable(tensors, cfg, names) == len(WINDOW) * len(MODULES) == report["llama_cpp_pairs"]
    assert "convert_lora_to_gguf.py" in report["command"]
    with pytest.raises(ValueError, match="only \\*.lora_A.weight"):
        check_llamacpp_readable({**tensors, "base_model.model.lm_head.weight": torch.zeros(1)}, cfg, names)


def test_merged_in_bfloat16_is_sharded_with_its_tokenizer(adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    base, src = adapter
    report = export_adapter(
        src, "merged", tmp_path / "m", dtype="bfloat16", max_shard_size="100KB", log=lambda _: None
    )
    assert report["passed"]
    out = tmp_path / "m"
    assert len(list(out.glob("model-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    assert (out / "tokenizer.json").is_file()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert 0 < report["merged"]["rounding_max_abs_diff"] < 0.05


def test_a_wrong_export_fails_its_check_with_exit_1(adapter, tmp_path, monkeypatch, capsys):
    """The self-check is real: an export that forgets to fold rsLoRA disagrees and exits 1."""
    from midblock_plugin.cli import main

    base, src = adapter
    monkeypatch.setattr(targets, "fold_rslora", lambda cfg: dict(cfg, use_rslora=False))
    assert main(["export", str(src), "--target", "sglang", "--output", str(tmp_path / "bad")]) == 1
    captured = capsys.readouterr()
    assert "MISMATCH" in captured.out and "do not serve it" in captured.err
    assert json.loads((tmp_path / "bad" / REPORT_JSON).read_text())["passed"] is False


# --------------------------------------------------------------------------- bad inputs, before any work


def _cli_error(capsys, *args):
    from midblock_plugin.cli import main

    try:
        code = main(["export", *map(str, args)])
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err


def test_bad_inputs_fail_before_work(adapter, tmp_path, capsys):
    base, src = adapter
    out = tmp_path / "out"
    code, err = _cli_error(capsys, tmp_path / "missing", "--target", "tgi", "--output", out)
    assert code == 2 and "no such directory" in err and "PeftModel.save_pretrained" in err
    code, err = _cli_error(capsys, src, "--target", "onnx", "--output", out)
    assert code == 2 and "invalid choice: 'onnx'" in err and "llama.cpp" in err
    code, err = _cli_error(capsys, src, "--target", "tgi", "--output", out, "--dtype", "bfloat16")
    assert code == 2 and "--dtype applies to --target merged only" in err
    code, err = _cli_error(capsys, src, "--target", "tgi", "--output", src)
    assert code == 2 and "is the adapter directory itself" in err
    code, err = _cli_error(capsys, base, "--target", "tgi", "--output", out)
    assert code == 2 and "no adapter_config.json" in err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    code, err = _cli_error(capsys, src, "--target", "tgi", "--output", tmp_path / "full")
    assert code == 2 and "is not empty" in err and "--overwrite" in err
    assert not out.exists()


def test_engine_limits_are_refused_before_work(tmp_path):
    from midblock_plugin.export.pipeline import check_request

    base, src = _make_adapter(tmp_path, use_rslora=False)
    cfg = json.loads((src / "adapter_config.json").read_text())
    (src / "adapter_config.json").write_text(json.dumps(dict(cfg, r=640)))
    with pytest.raises(ValueError, match="above vLLM's largest --max-lora-rank 512"):
        check_request(src, "vllm", tmp_path / "o")
    (src / "adapter_config.json").write_text(json.dumps(dict(cfg, use_dora=True)))
    with pytest.raises(ValueError, match="use_dora.*use --target merged"):
        check_request(src, "tgi", tmp_path / "o")
    (src / "adapter_config.json").write_text(json.dumps(dict(cfg, base_model_name_or_path=None)))
    with pytest.raises(ValueError, match="give --base MODEL_DIR"):
        check_request(src, "tgi", tmp_path / "o")
    assert check_request(src, "tgi", tmp_path / "o", base=str(base)).rank == 13


def test_tgi_padding_on_gpt2_conv1d_all_linear(tmp_path):
    """GPT-2's Conv1D projections (PEFT's fan_in_fan_out) and two c_proj per layer: the zero
    matrices get the shapes PEFT gives the window's, and the logits still match."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = save_tiny(tmp_path / "gpt2", "gpt2", num_layers=NUM_LAYERS)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(
        model, build_plan(model, MidBlockConfig(rank=4, target_modules="all-linear")).lora_config()
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    peft_model.save_pretrained(tmp_path / "adapter")
    report = export_adapter(tmp_path / "adapter", "tgi", tmp_path / "tgi", log=lambda _: None)
    assert (
        report["passed"] and report["padded_layer_modules"] == 2 * 4
    )  # layers 0 and 4 x (c_attn, c_proj, c_fc, c_proj)
    padded = _tensors(tmp_path / "tgi")
    assert (
        padded["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"].shape
        == padded["base_model.model.transformer.h.2.attn.c_attn.lora_A.weight"].shape
    )


@pytest.mark.gpu
@pytest.mark.parametrize("target", list(TARGETS))
def test_every_target_on_cuda(adapter, tmp_path, target):
    """The same exports with the self-check on a CUDA device (``--device cuda``)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    base, src = adapter
    report = export_adapter(src, target, tmp_path / target, device="cuda", log=print)
    assert report["passed"], report["checks"]
    assert all(c["max_abs_diff"] <= 1e-5 and c["adapter_effect"] > 1e-3 for c in report["checks"])


# --------------------------------------------------------------------------- the table of targets


ROOT = Path(__file__).resolve().parents[1]


def _option(command, flag):
    from midblock_plugin.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    return parser, next(a for a in parser._actions if flag in a.option_strings)


def test_the_target_table_is_the_only_source():
    parser, target = _option("export", "--target")
    assert list(target.choices) == list(TARGETS)  # the choices are the table's keys, in its order
    usage = " ".join(parser.format_help().split())
    docs = (ROOT / "docs" / "serving.md").read_text()
    for name, spec in TARGETS.items():
        assert spec.name == name and spec.engine and spec.summary
        assert f"{name}: {' '.join(spec.summary.split())}" in usage  # --target's help, from the table
        assert f"`{name}`" in docs, f"docs/serving.md does not describe --target {name}"
        command = spec.serve("OUT", "BASE", {})
        assert "OUT" in command and (spec.merges or "BASE" in command)
        assert spec.merges or all(callable(step) for step in spec.steps)
    # every flag of the command is a field of ExportOptions (but --json, how the command prints), with its help
    from midblock_plugin.export.options import ExportOptions

    dests = {a.dest for a in parser._actions if a.dest not in ("help", "json")}
    assert dests == {f.name for f in dataclasses.fields(ExportOptions)}
    assert all(f.metadata.get("help") for f in dataclasses.fields(ExportOptions))
    # a target's name is written in the table only: no other shipped module has it as a string in its code ("vllm"
    # is also an evaluation backend elsewhere, so it is looked for in the export code only)
    shipped = sorted((ROOT / "midblock_plugin").rglob("*.py"))
    export_code = [p for p in shipped if "export" in p.relative_to(ROOT).parts or p.name == "export.py"]
    for path in shipped:
        if path == ROOT / "midblock_plugin" / "export" / "targets.py":
            continue
        names = set(TARGETS) if path in export_code else set(TARGETS) - {"vllm"}
        if path == ROOT / "midblock_plugin" / "io.py":
            names -= {"merged"}  # TRAINER_ARTIFACTS: Axolotl merge-lora's <output_dir>/merged, not the target
        found = names & string_literals(path)
        assert not found, f"{path.relative_to(ROOT)} writes the target name(s) {found}; read export.targets.TARGETS"


def test_a_target_entry_that_cannot_run_is_refused():
    with pytest.raises(ValueError, match="'m2'.*merging target.*steps and limits would never run"):
        ExportTarget("m2", "any", "merged twice", targets.serve_merged, steps=(targets.step_fold_rslora,), merges=True)
    with pytest.raises(ValueError, match="--target 'onnx' is not a target; choose one of vllm, sglang"):
        targets.get_target("onnx")


def test_a_registered_target_exports_end_to_end(adapter, tmp_path, monkeypatch, capsys):
    """Adding a target is one entry in TARGETS: the command accepts it, lists it in its help, runs its
    steps and serve command, and self-checks it like any other (a wrong step fails with exit 1)."""
    from midblock_plugin.cli import main

    base, src = adapter

    def record(work):
        work.report["fake_pairs"] = len(work.tensors) // 2
        work.config = dict(work.config, fake_engine=True)  # engines ignore unknown keys; PEFT too

    def double_b(work):  # a wrong transformation: lora_B doubled
        work.tensors = {k: v * 2 if ".lora_B." in k else v for k, v in work.tensors.items()}

    serve = lambda out, base, report: f"fake-serve --base {base} --adapter {out}"  # noqa: E731
    monkeypatch.setattr(
        targets,
        "TARGETS",
        {
            **TARGETS,
            "fake": ExportTarget("fake", "FakeServe", "the adapter with a marker key", serve, steps=(record,)),
            "fake-wrong": ExportTarget("fake-wrong", "FakeServe", "lora_B doubled", serve, steps=(double_b,)),
        },
    )
    _, option = _option("export", "--target")
    assert "fake" in option.choices and "fake: the adapter with a marker key" in option.help
    capsys.readouterr()
    assert main(["export", str(src), "--target", "fake", "--output", str(tmp_path / "f"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["engine"] == "FakeServe" and report["fake_pairs"] == len(WINDOW) * len(MODULES)
    assert report["command"] == f"fake-serve --base {base} --adapter {tmp_path / 'f'}"
    assert json.loads((tmp_path / "f" / "adapter_config.json").read_text())["fake_engine"] is True
    assert main(["export", str(src), "--target", "fake-wrong", "--output", str(tmp_path / "w")]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # the table's copy is gone with the monkeypatch: only registered names parse
        monkeypatch.undo()
        main(["export", str(src), "--target", "fake", "--output", str(tmp_path / "g")])


# --------------------------------------------------------------------------- the base it is exported onto


def _no_weights(*a, **k):
    raise AssertionError("a model's weights were loaded")


@pytest.mark.parametrize(
    "arch, layers, says",
    [
        ("qwen2", NUM_LAYERS, "the architecture (model_type) differs"),  # same depth and widths: only the kind differs
        ("llama", NUM_LAYERS + 2, "the depth (num_hidden_layers) differs"),  # the window 1-3 exists in both
        ("qwen2", NUM_LAYERS + 3, "the architecture (model_type) and the depth (num_hidden_layers) differ"),
    ],
)
def test_a_base_of_another_kind_is_refused_before_any_weight_loads(
    adapter, tmp_path, monkeypatch, capsys, arch, layers, says
):
    """Same module names and widths, so the weights' shapes alone would pass: the adapter's recorded base says
    what it was trained on, and the message names both models."""
    from midblock_plugin.export import pipeline

    base, src = adapter
    other = save_tiny(tmp_path / "other", arch, num_layers=layers)
    monkeypatch.setattr(pipeline, "_load_base", _no_weights)
    out = tmp_path / "out"
    code, err = _cli_error(capsys, src, "--target", "vllm", "--output", out, "--base", other)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert f"was trained on llama, {NUM_LAYERS} layers, hidden size 64 (its recorded base {str(base)!r})" in line
    assert f"--base {str(other)!r} is {arch}, {layers} layers, hidden size 64" in line and says in line
    assert not out.exists() and "Traceback" not in err


def test_the_plan_beside_the_adapter_says_what_it_was_trained_on_when_its_base_is_gone(adapter, tmp_path):
    """The recorded base moved away: midblock's plan.json beside the adapter (as `midblock run` and the callback
    save it) still tells the depth and architecture; without it, the note says only the weights were checked."""
    from midblock_plugin.export.pipeline import check_request

    base, src = adapter
    moved = tmp_path / "adapter"
    shutil.copytree(src, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps(dict(cfg, base_model_name_or_path=str(tmp_path / "gone"))))
    deeper = save_tiny(tmp_path / "deeper", "llama", num_layers=NUM_LAYERS + 2)
    source = check_request(moved, "vllm", tmp_path / "o", base=str(deeper))  # nothing to compare with but the weights
    assert (
        "cannot be read here" in source.base_note and "checked against the adapter's weights only" in source.base_note
    )
    model = __import__("transformers").AutoModelForCausalLM.from_pretrained(base)
    plan = build_plan(model, MidBlockConfig(rank=8, lora_dropout=0.0)).to_json_dict()
    (moved / "midblock").mkdir()
    (moved / "midblock" / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(ValueError, match=r"was trained on llama, 5 layers \(its midblock plan .*plan.json\); --base "):
        check_request(moved, "vllm", tmp_path / "o", base=str(deeper))
    # a plan.json of another window is not this adapter's: ignored
    (moved / "midblock" / "plan.json").write_text(json.dumps(dict(plan, layers=[0, 1])))
    assert check_request(moved, "vllm", tmp_path / "o", base=str(deeper)).base_note


def test_a_fine_tuned_copy_of_the_base_is_allowed_with_a_note_and_recorded(adapter, tmp_path):
    """Another base of the same architecture, depth and widths (other weights: a fine-tuned copy) exports, says so
    in one line, and the exported config names the base actually used (what engines and llama.cpp read)."""
    base, src = adapter
    copy = save_tiny(tmp_path / "copy", "llama", num_layers=NUM_LAYERS, seed=7)
    lines = []
    report = export_adapter(src, "tgi", tmp_path / "t", base=str(copy), log=lines.append)
    assert report["passed"] and report["base"] == str(copy) and report["recorded_base"] == str(base)
    notes = [line for line in lines if line.startswith("note:")]
    assert len(notes) == 1 and f"--base {str(copy)!r} is not the adapter's recorded base" in notes[0]
    assert "llama, 5 layers, hidden size 64" in notes[0]
    assert json.loads((tmp_path / "t" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(copy)
    assert str(copy) in report["command"]
    # the recorded base itself: no note, and the exported config names it
    lines.clear()
    export_adapter(src, "vllm", tmp_path / "v", log=lines.append)
    assert not [line for line in lines if line.startswith("note:")]
    assert json.loads((tmp_path / "v" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)


# --------------------------------------------------------------------------- space, and writes whole or not at all


def test_merged_export_without_the_disk_space_is_refused_before_loading(adapter, tmp_path, monkeypatch, capsys):
    """The merged model's size (parameters x dtype bytes, from the base's safetensors header) is checked against
    the free space of --output's filesystem before the base is loaded."""
    from midblock_plugin import storage
    from midblock_plugin.export import pipeline

    base, src = adapter
    params = storage.model_parameters(str(base))
    model = __import__("transformers").AutoModelForCausalLM.from_pretrained(base)
    assert params == sum(p.numel() for p in model.parameters())  # the header count is the model's
    usage = shutil.disk_usage(tmp_path)
    free = usage._replace(free=params)  # room for one byte per parameter, not four
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda p: free)
    monkeypatch.setattr(pipeline, "_load_base", _no_weights)
    capsys.readouterr()
    out = tmp_path / "m"
    code, err = _cli_error(capsys, src, "--target", "merged", "--output", out, "--dtype", "float32")
    assert code == 2 and "not enough disk space for the merged export" in err, err
    need = storage.human(params * 4 + storage.MARGIN_BYTES + storage.files_bytes(src, pipeline.TOKENIZER_FILES))
    assert f"it needs about {need}" in err and f"{storage.human(params)} is free" in err
    assert not out.exists() and len(err.strip().splitlines()) == 1


def test_overwrite_replaces_an_export_whole(adapter, tmp_path):
    """--overwrite: the previous export stays in place until the new one is complete, then is replaced whole."""
    base, src = adapter
    out = tmp_path / "o"
    export_adapter(src, "tgi", out, log=lambda _: None)
    (out / "stale.txt").write_text("from before")
    report = export_adapter(src, "vllm", out, overwrite=True, log=lambda _: None)
    assert sorted(p.name for p in out.iterdir()) == sorted(report["files"]) and report["target"] == "vllm"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no staging or old copy left beside it
    with pytest.raises(ValueError, match="holds the adapter being exported; --overwrite would remove it"):
        export_adapter(src, "vllm", src.parent, overwrite=True, log=lambda _: None)
