"""The paper's protocol, and evaluation after the save in its own process (``--backend hf``
and ``--backend vllm``).

* ``protocol="paper"`` is lm-eval's gsm8k with 0 shots, 64 new tokens, greedy, headlined by
  the flexible-extract (last number) filter: its generations equal an lm-eval-protocol run
  with those settings given explicitly; contradictions are refused with the flag named.
* ``--backend hf``: a saved model evaluated by ``midblock eval`` in a subprocess
  (:func:`evaluate_after_save`) equals the in-memory evaluation, in one process and
  data-parallel under ``torchrun --nproc-per-node 2``.
* ``--backend vllm``: everything around lm-eval's vLLM model is checked on CPU (the missing
  extra is named before any work, arguments are passed through, an adapter is merged into
  a temporary copy that equals the PEFT model); the real run is the ``gpu`` test at the end.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from midblock_plugin.evaluation import EvalSettings  # noqa: E402
from midblock_plugin.rules import install_hint  # noqa: E402
from midblock_plugin.testing import GSM8K_DIR  # noqa: E402


needs_gsm8k = pytest.mark.skipif(
    not (GSM8K_DIR / "test.jsonl").is_file(), reason=f"GSM8K not found at {GSM8K_DIR} (set MIDBLOCK_GSM8K_DIR)"
)
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _responses(report) -> dict:
    return {str(s["doc_id"]): s["response"] for s in report["samples"]["gsm8k"]}


def _one_thread(fn):
    """Run ``fn`` with one torch thread, as the launched ranks do (float sums are order-sensitive
    and a random tiny model's logits are nearly tied, so greedy decoding would notice)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(protocol="paper", num_fewshot=5),
            "num_fewshot=5 contradicts protocol='paper', which fixes num_fewshot=0",
        ),
        (dict(protocol="paper", max_gen_toks=256), "contradicts protocol='paper', which fixes max_gen_toks=64"),
        (
            dict(protocol="paper", tasks="gsm8k_cot"),
            "tasks=['gsm8k_cot'] contradicts protocol='paper', the paper's GSM8K protocol, which evaluates gsm8k only",
        ),
        (dict(protocol="zero-shot"), "choose one of 'lm-eval', 'paper'"),
        (dict(backend="sglang"), "choose one of 'in-memory', 'hf', 'vllm'"),
        (dict(tensor_parallel_size=2), "needs backend='vllm'"),
        (dict(backend="vllm", tensor_parallel_size=0), "tensor_parallel_size=0 must be a positive integer"),
        (dict(backend="vllm", vllm_args="gpu_memory_utilization"), "is not key=value"),
        (dict(backend="vllm", processes=2), "needs backend='hf'"),
        (dict(partitioned_mode="gather"), "choose one of 'sharded', 'lockstep'"),
    ],
)
def test_protocol_and_backend_settings_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        EvalSettings(**kwargs)


def test_paper_protocol_fixes_lm_eval_settings():
    paper = EvalSettings(protocol="paper", num_fewshot=0, max_gen_toks=64)  # the same values: no contradiction
    assert paper.effective_num_fewshot == 0 and paper.gen_kwargs == {"max_gen_toks": 64, "do_sample": False}
    assert paper.headline_filter == "flexible-extract" and paper.protocol_info()["name"] == "paper"
    default = EvalSettings()
    assert default.effective_num_fewshot is None and default.gen_kwargs is None
    assert default.headline_filter == "strict-match"


@needs_gsm8k
def test_paper_protocol_is_lm_evals_gsm8k_zero_shot_64_tokens(tmp_path):
    from midblock_plugin.evaluation import evaluate_model
    from midblock_plugin.evaluation.results import format_table
    from midblock_plugin.testing import tiny_model, tiny_tokenizer

    model, tok = tiny_model("llama", num_layers=2, seed=1), tiny_tokenizer()
    paper = evaluate_model(
        model,
        tok,
        EvalSettings(protocol="paper", limit=3, batch_size=3, save_samples=True),
        output_dir=tmp_path,
        print_table=False,
    )
    explicit = evaluate_model(
        model,
        tok,
        EvalSettings(limit=3, batch_size=3, num_fewshot=0, max_gen_toks=64, save_samples=True),
        print_table=False,
    )
    assert _responses(paper) == _responses(explicit)
    assert paper["results"]["gsm8k"]["metrics"] == explicit["results"]["gsm8k"]["metrics"]
    entry = paper["results"]["gsm8k"]
    assert entry["num_fewshot"] == 0 and entry["lm_eval_config"]["generation_kwargs"]["max_gen_toks"] == 64
    assert entry["lm_eval_config"]["generation_kwargs"]["do_sample"] is False
    prompt = paper["samples"]["gsm8k"][0]["prompt"]
    assert (
        prompt.startswith("Question: ") and prompt.count("Question:") == 1 and prompt.endswith("Answer:")
    )  # zero-shot
    written = json.loads((tmp_path / "eval" / "gsm8k.json").read_text())
    assert written["protocol"]["name"] == "paper" and written["protocol"]["max_gen_toks"] == 64
    assert written["headline"] == {
        "protocol": "paper",
        "filter": "flexible-extract",
        "metric": "exact_match",
        "n": 3,
        "value": entry["metrics"]["flexible-extract"]["exact_match"],
        "stderr": entry["metrics"]["flexible-extract"]["exact_match_stderr"],
    }
    assert "protocol paper; 0-shot" in format_table(paper)
    assert explicit["protocol"]["name"] == "lm-eval" and explicit["headline"]["gsm8k"]["filter"] == "strict-match"


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--protocol", "paper", "--num-fewshot", "5"],
            "--num-fewshot 5: contradicts --protocol 'paper', which fixes --num-fewshot 0",
        ),
        (["--protocol", "paper", "--max-gen-toks", "100"], "Leave --max-gen-toks unset"),
        (["--tensor-parallel-size", "2"], "needs --backend 'vllm'"),
    ],
)
def test_cli_refuses_protocol_contradictions_before_loading(tmp_path, capsys, extra, message):
    from midblock_plugin.cli import main

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")  # not loadable: any attempt to load would fail differently
    assert main(["eval", str(model_dir), "--data-dir", str(GSM8K_DIR)] + extra) == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------- after the save
def _saved_tiny(tmp_path: Path, seed: int = 1):
    from midblock_plugin.testing import tiny_model, tiny_tokenizer

    model, tok = tiny_model("llama", num_layers=2, seed=seed), tiny_tokenizer()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model, tok, model_dir


def test_eval_command_carries_every_setting(tmp_path):
    from midblock_plugin.evaluation.saved import eval_command

    settings = EvalSettings(
        backend="vllm",
        protocol="paper",
        limit=7,
        tensor_parallel_size=4,
        data_parallel_size=2,
        vllm_args="gpu_memory_utilization=0.8",
        data_dir=str(GSM8K_DIR),
        save_samples=True,
    )
    cmd = eval_command(tmp_path / "out", settings, tmp_path / "out" / "eval" / "gsm8k.json", adapter=tmp_path / "a")
    text = " ".join(cmd)
    for part in (
        "-m midblock_plugin.cli eval",
        "--backend vllm",
        "--protocol paper",
        "--limit 7",
        "--tensor-parallel-size 4",
        "--data-parallel-size 2",
        "--vllm-args gpu_memory_utilization=0.8",
        f"--data-dir {settings.resolved_data_dir()}",
        "--save-samples",
        f"--adapter {tmp_path / 'a'}",
    ):
        assert part in text, part
    hf = eval_command(tmp_path, EvalSettings(backend="hf", processes=2, limit=3), tmp_path / "x.json")
    assert hf[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] and "--backend" in hf
    assert "--tensor-parallel-size" not in hf


@needs_gsm8k
def test_after_save_hf_equals_in_memory(tmp_path):
    """``midblock eval --backend hf`` in its own process (started as a training script would,
    by :func:`evaluate_after_save`) gives the in-memory evaluation's numbers and generations."""
    from midblock_plugin.evaluation import evaluate_model
    from midblock_plugin.evaluation.saved import evaluate_after_save

    model, tok, model_dir = _saved_tiny(tmp_path)
    fields = dict(limit=5, num_fewshot=1, max_gen_toks=8, batch_size=2, save_samples=True, data_dir=str(GSM8K_DIR))
    memory = _one_thread(lambda: evaluate_model(model, tok, EvalSettings(**fields), print_table=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    saved = evaluate_after_save(model_dir, EvalSettings(**fields, backend="hf"), output_dir=tmp_path / "run", env=env)
    assert saved["backend"] == "hf" and saved["distributed"]["mode"] == "single"
    assert saved["metrics"] == memory["results"]["gsm8k"]["metrics"]
    rows = [json.loads(line) for line in open(tmp_path / "run" / "eval" / "gsm8k.samples.jsonl")]
    assert {str(r["doc_id"]): r["response"] for r in rows} == _responses(memory)
    assert any(r["response"].strip() for r in rows)

    # data-parallel (2 processes under torchrun): the ranks split the batches, results unchanged
    parallel = evaluate_after_save(
        model_dir, EvalSettings(**fields, backend="hf", processes=2), output_dir=tmp_path / "dp", env=env
    )
    assert parallel["distributed"] == {
        "mode": "sharded",
        "world_size": 2,
        "partitioner": None,
        "rows_per_rank": [3, 2],
        "generate_calls_per_rank": [2, 1],
    }
    assert parallel["metrics"] == saved["metrics"]
    rows = [json.loads(line) for line in open(tmp_path / "dp" / "eval" / "gsm8k.samples.jsonl")]
    assert {str(r["doc_id"]): r["response"] for r in rows} == _responses(memory)


def test_after_save_refuses_in_memory_backend(tmp_path):
    from midblock_plugin.evaluation.saved import evaluate_after_save

    with pytest.raises(ValueError, match="backend 'hf' or 'vllm'"):
        evaluate_after_save(tmp_path, EvalSettings())


# ---------------------------------------------------------------------------------- vLLM
@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_vllm_missing_is_named_before_any_work(tmp_path, capsys):
    from midblock_plugin.cli import main
    from midblock_plugin.evaluation import EvalCallback
    from midblock_plugin.evaluation.saved import evaluate_after_save

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")  # not loadable: loading would fail differently
    assert main(["eval", str(model_dir), "--backend", "vllm", "--data-dir", str(GSM8K_DIR)]) == 2
    err = capsys.readouterr().err
    assert "--backend vllm needs the optional package 'vllm'" in err and "pip install -e '.[vllm]'" in err
    settings = EvalSettings(backend="vllm", data_dir=str(GSM8K_DIR))
    with pytest.raises(ImportError, match=r"midblock-plugin\[vllm\]"):
        evaluate_after_save(model_dir, settings)
    with pytest.raises(ImportError, match=r"midblock-plugin\[vllm\]"):  # before training starts
        EvalCallback(settings)


def test_vllm_model_args_pass_parallelism_through(tmp_path):
    from midblock_plugin.evaluation.saved import vllm_model_args

    settings = EvalSettings(
        backend="vllm",
        tensor_parallel_size=4,
        data_parallel_size=2,
        batch_size="auto",
        max_length=2048,
        vllm_args="gpu_memory_utilization=0.85,enforce_eager=True,seed=7",
    )
    args = vllm_model_args(tmp_path / "merged", settings, dtype="bfloat16")
    assert args == {
        "pretrained": str(tmp_path / "merged"),
        "tokenizer": str(tmp_path / "merged"),
        "tensor_parallel_size": 4,
        "data_parallel_size": 2,
        "dtype": "bfloat16",
        "batch_size": "auto",
        "trust_remote_code": False,
        "max_model_len": 2048,
        "gpu_memory_utilization": 0.85,
        "enforce_eager": True,
        "seed": 7,
    }


def test_adapter_is_merged_into_a_temporary_copy(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from midblock_plugin.evaluation.saved import merged_model

    _, tok, model_dir = _saved_tiny(tmp_path, seed=2)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], layers_to_transform=[1]))
    with torch.no_grad():  # LoRA B starts at zero: make the adapter change the model
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    ids = torch.tensor([tok("Question: 2 + 3?\nAnswer:")["input_ids"]])
    with torch.no_grad():
        expected = peft_model(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(model_dir)(ids).logits
    assert not torch.allclose(expected, plain, atol=1e-4)  # the adapter matters

    with merged_model(model_dir, None) as same:
        assert same == model_dir  # no adapter: the saved model itself, no copy
    with merged_model(model_dir, adapter, tmp_root=tmp_path) as merged:
        assert (
            merged != model_dir
            and (merged / "config.json").is_file()
            and not (merged / "adapter_config.json").exists()
        )
        assert AutoTokenizer.from_pretrained(merged)("Answer: 5")["input_ids"] == tok("Answer: 5")["input_ids"]
        with torch.no_grad():
            got = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not merged.exists()  # the temporary copy is gone


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_VLLM, reason=f"vLLM not installed ({install_hint('vllm')})")
@needs_gsm8k
def test_vllm_backend_on_a_saved_model_with_adapter(tmp_path):
    """Run on a GPU machine with vLLM: ``midblock eval --backend vllm`` on a saved base model
    plus a LoRA adapter (merged into a temporary copy) scores GSM8K with lm-eval's vLLM model
    and agrees with ``--backend hf`` on the same merged weights (greedy, a few rows)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from midblock_plugin.cli import main

    _, tok, model_dir = _saved_tiny(tmp_path, seed=2)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    common = [
        str(model_dir),
        "--adapter",
        str(adapter),
        "--data-dir",
        str(GSM8K_DIR),
        "--limit",
        "4",
        "--protocol",
        "paper",
        "--save-samples",
        "--dtype",
        "float32",
    ]
    out = tmp_path / "vllm" / "gsm8k.json"
    assert (
        main(
            [
                "eval",
                *common,
                "--backend",
                "vllm",
                "--output",
                str(out),
                "--vllm-args",
                "gpu_memory_utilization=0.3,enforce_eager=True",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["backend"] == "vllm" and report["model"]["class"] == "VLLM" and report["model"]["merged_adapter"]
    assert report["n_samples"] == 4 and report["protocol"]["name"] == "paper" and report["num_fewshot"] == 0
    hf = tmp_path / "hf" / "gsm8k.json"
    assert main(["eval", *common, "--backend", "hf", "--output", str(hf), "--device", "cuda"]) == 0
    assert json.loads(hf.read_text())["metrics"] == report["metrics"]
