"""EvalCallback at the end of a real TRL SFTTrainer run on a tiny model (offline).

* the trained LoRA model is evaluated in memory, results land in ``<output_dir>/eval``
  and in the trainer's log history, and equal ``midblock eval BASE --adapter OUT`` on
  the saved adapter (same generations);
* an evaluation that fails at run time leaves the training result and the saved model
  intact and records the error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from midblock_plugin.evaluation import EvalSettings  # noqa: E402
from midblock_plugin.testing import GSM8K_DIR, gsm8k_rows  # noqa: E402


pytestmark = pytest.mark.skipif(
    not (GSM8K_DIR / "test.jsonl").is_file(), reason=f"GSM8K not found at {GSM8K_DIR} (set MIDBLOCK_GSM8K_DIR)"
)


def _trainer(output_dir: Path, model, tok, peft: bool = True):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    rows = [{"text": f"Question: {r['question']}\nAnswer: {r['answer']}"} for r in gsm8k_rows("train", 16)]
    args = SFTConfig(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        max_steps=2,
        report_to=[],
        gradient_checkpointing=False,
        per_device_train_batch_size=4,
        max_length=128,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if peft else None,
    )


def test_sft_end_of_training_eval_with_baseline_equals_midblock_eval(tmp_path):
    from midblock_plugin.cli import main
    from midblock_plugin.evaluation import EvalCallback
    from midblock_plugin.testing import tiny_model, tiny_tokenizer

    model, tok = tiny_model("llama", num_layers=4), tiny_tokenizer()
    base_dir, out_dir = tmp_path / "base", tmp_path / "out"
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)

    trainer = _trainer(out_dir, model, tok)
    settings = EvalSettings(limit=3, num_fewshot=1, max_gen_toks=16, batch_size=3, baseline=True, save_samples=True)
    callback = EvalCallback(settings, trainer=trainer)
    trainer.add_callback(callback)
    result = trainer.train()
    trainer.save_model(str(out_dir))
    assert result.global_step == 2 and result.training_loss > 0

    # files: final with baseline and change, and the baseline's own file
    final = json.loads((out_dir / "eval" / "gsm8k.json").read_text())
    baseline = json.loads((out_dir / "eval" / "gsm8k.baseline.json").read_text())
    assert final["label"] == "final" and baseline["label"] == "baseline"
    for filt in ("strict-match", "flexible-extract"):
        assert set(final["metrics"][filt]) == {"exact_match", "exact_match_stderr"}
        assert final["baseline"][filt] == baseline["metrics"][filt]
        assert final["change"][filt]["exact_match"] == pytest.approx(
            final["metrics"][filt]["exact_match"] - baseline["metrics"][filt]["exact_match"]
        )
    assert final["n_samples"] == 3 and final["limit"] == 3 and final["model"]["peft"] is True
    assert not (out_dir / "eval" / "error.json").exists()

    # the trainer's log: baseline at step 0, final after training, both through trainer.log
    history = trainer.state.log_history
    base_log = next(h for h in history if "lm_eval_baseline/gsm8k/strict-match/exact_match" in h)
    final_log = next(h for h in history if "lm_eval/gsm8k/strict-match/exact_match" in h)
    assert base_log["step"] == 0 and final_log["step"] == 2
    assert history.index(final_log) > max(i for i, h in enumerate(history) if "train_loss" in h)
    assert (
        final_log["lm_eval/gsm8k/flexible-extract/exact_match"] == final["metrics"]["flexible-extract"]["exact_match"]
    )
    assert final_log["lm_eval/gsm8k/n_samples"] == 3.0
    assert callback.reports["final"]["results"]["gsm8k"]["metrics"] == final["metrics"]

    # training changed the generations, and the saved adapter reproduces the in-memory ones exactly
    mem = {s["doc_id"]: s["response"] for s in callback.reports["final"]["samples"]["gsm8k"]}
    before = {s["doc_id"]: s["response"] for s in callback.reports["baseline"]["samples"]["gsm8k"]}
    assert mem != before
    cli_out = tmp_path / "cli" / "gsm8k.json"
    argv = [
        "eval",
        str(base_dir),
        "--adapter",
        str(out_dir),
        "--limit",
        "3",
        "--num-fewshot",
        "1",
        "--max-gen-toks",
        "16",
        "--batch-size",
        "3",
        "--device",
        "cpu",
        "--output",
        str(cli_out),
        "--save-samples",
    ]
    assert main(argv) == 0
    cli = json.loads(cli_out.read_text())
    assert cli["metrics"] == final["metrics"] and cli["n_samples"] == final["n_samples"]
    cli_resps = {
        json.loads(line)["doc_id"]: json.loads(line)["response"]
        for line in open(cli_out.with_name("gsm8k.samples.jsonl"))
    }
    assert cli_resps == mem


def test_failing_evaluation_never_fails_training_or_loses_the_model(tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM

    from midblock_plugin.evaluation import EvalCallback
    from midblock_plugin.testing import tiny_model, tiny_tokenizer

    data = tmp_path / "gsm8k"
    data.mkdir()
    for split in ("train", "test"):
        with open(data / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for row in gsm8k_rows(split, 6):
                fh.write(json.dumps(row) + "\n")
    out_dir = tmp_path / "out"
    trainer = _trainer(out_dir, tiny_model("llama", num_layers=2), tiny_tokenizer(), peft=False)
    callback = EvalCallback(EvalSettings(limit=2, num_fewshot=1, max_gen_toks=4, data_dir=str(data)))  # valid now
    trainer.add_callback(callback)  # not bound to the trainer: errors go to state.log_history directly
    # ... and the data vanishes during training (a shared filesystem hiccup): the evaluation fails at run time
    (data / "test.jsonl").unlink()

    result = trainer.train()
    assert result.global_step == 2 and result.training_loss > 0
    trainer.save_model(str(out_dir))
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir)
    assert torch.equal(reloaded.lm_head.weight, trainer.model.lm_head.weight)

    assert "final" in callback.errors and "final" not in callback.reports
    error = json.loads((out_dir / "eval" / "error.json").read_text())
    assert error["label"] == "final" and "test.jsonl" in error["error"] and error["traceback"]
    logged = [h for h in trainer.state.log_history if "lm_eval/error" in h]
    assert len(logged) == 1 and logged[0]["lm_eval/error"] == callback.errors["final"]
    assert "train_loss" in trainer.state.log_history[-2]
    assert "lm-eval final evaluation FAILED" in capsys.readouterr().out


def test_disabled_callback_does_nothing_and_final_can_run_after_saving(tmp_path):
    from midblock_plugin.evaluation import EvalCallback
    from midblock_plugin.testing import tiny_model, tiny_tokenizer

    out_dir = tmp_path / "out"
    trainer = _trainer(out_dir, tiny_model("llama", num_layers=2), tiny_tokenizer(), peft=False)
    # disabled: not even its (invalid) task name is looked at, nothing runs
    trainer.add_callback(EvalCallback(EvalSettings(enabled=False, tasks=["no_such_task"], baseline=True)))
    # deferred: the integration runs the final evaluation itself, after saving (as Axolotl's post_train would)
    deferred = EvalCallback(EvalSettings(limit=2, num_fewshot=1, max_gen_toks=4), final_on_train_end=False)
    trainer.add_callback(deferred)
    trainer.train()
    assert not (out_dir / "eval").exists()
    assert not any(k.startswith("lm_eval") for h in trainer.state.log_history for k in h)

    trainer.save_model(str(out_dir))
    report = deferred.run_final(trainer)
    assert report is not None and deferred.trainer is trainer
    saved = json.loads((out_dir / "eval" / "gsm8k.json").read_text())
    assert saved["metrics"] == report["results"]["gsm8k"]["metrics"] and saved["n_samples"] == 2
    assert "lm_eval/gsm8k/strict-match/exact_match" in trainer.state.log_history[-1]
