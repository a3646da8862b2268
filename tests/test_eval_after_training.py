"""Evaluation after the save, at the end of a real TRL SFTTrainer run (the TRL example's
``--eval-backend hf``): ``EvalCallback`` with ``backend="hf"`` leaves the model in memory
alone at train end, and :meth:`EvalCallback.run_after_save` (rank 0, once the adapter is
saved) runs ``midblock eval`` in its own process, under the paper's protocol, with the
same generations as the in-memory evaluation of the trained model; results reach the
trainer's log and ``<output_dir>/eval/gsm8k.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from midblock_plugin.evaluation import EvalSettings  # noqa: E402
from midblock_plugin.testing import GSM8K_DIR, gsm8k_rows  # noqa: E402


pytestmark = pytest.mark.skipif(
    not (GSM8K_DIR / "test.jsonl").is_file(), reason=f"GSM8K not found at {GSM8K_DIR} (set MIDBLOCK_GSM8K_DIR)"
)


def test_sft_then_after_save_hf_equals_in_memory(tmp_path, monkeypatch):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from midblock_plugin.evaluation import EvalCallback, evaluate_model
    from midblock_plugin.testing import tiny_model, tiny_tokenizer

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the evaluation subprocess: one thread, like the reference below
    base_dir, out_dir = tmp_path / "base", tmp_path / "out"
    tiny_model("llama", num_layers=4, seed=1).save_pretrained(base_dir)
    tok = tiny_tokenizer()
    tok.save_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)  # the adapter names its base: base_dir

    rows = [{"text": f"Question: {r['question']}\nAnswer: {r['answer']}"} for r in gsm8k_rows("train", 8)]
    args = SFTConfig(
        output_dir=str(out_dir),
        use_cpu=True,
        bf16=False,
        max_steps=2,
        report_to=[],
        gradient_checkpointing=False,
        per_device_train_batch_size=4,
        max_length=96,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    settings = EvalSettings(
        protocol="paper", backend="hf", limit=4, batch_size=2, save_samples=True, data_dir=str(GSM8K_DIR)
    )
    callback = EvalCallback(settings, trainer=trainer)
    trainer.add_callback(callback)
    trainer.train()
    assert callback.reports == {} and not (out_dir / "eval").exists()  # nothing in memory at train end

    # what the TRL example does after training: save, then evaluate the saved model in its own process
    trainer.save_model(str(out_dir))
    tok.save_pretrained(str(out_dir))
    report = callback.run_after_save(out_dir)
    assert callback.errors == {} and report is not None
    written = json.loads((out_dir / "eval" / "gsm8k.json").read_text())
    assert written == report
    assert report["backend"] == "hf" and report["protocol"]["name"] == "paper" and report["num_fewshot"] == 0
    assert report["headline"]["filter"] == "flexible-extract" and report["n_samples"] == 4
    assert report["model"]["peft"] is True
    logged = {k for h in trainer.state.log_history for k in h}
    assert "lm_eval/gsm8k/flexible-extract/exact_match" in logged

    # the trained model still in memory gives the same generations and numbers
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        memory = evaluate_model(
            trainer.model, tok, dataclasses.replace(settings, backend="in-memory"), print_table=False
        )
    finally:
        torch.set_num_threads(threads)
    assert report["metrics"] == memory["results"]["gsm8k"]["metrics"]
    saved_rows = [json.loads(line) for line in open(out_dir / "eval" / "gsm8k.samples.jsonl")]
    assert {r["doc_id"]: r["response"] for r in saved_rows} == {
        s["doc_id"]: s["response"] for s in memory["samples"]["gsm8k"]
    }
    assert any(r["response"].strip() for r in saved_rows)
