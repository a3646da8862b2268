"""Distributed evaluation on CPU (2 processes, gloo, launched with torchrun).

* DDP: the two ranks generate for disjoint shards (no duplicated generation), rank 0
  alone writes files, every rank returns the same report, and it equals a single-process
  run generation for generation.
* DeepSpeed ZeRO-3 (slow, needs deepspeed): inside a real SFTTrainer run with a baseline
  at train start, the ranks split the questions of the partitioned model ("sharded": 3 and
  2 rows, 2 generate calls each, one of them a dummy) and the baseline equals a
  single-process evaluation of the same weights generation for generation; the final
  evaluation equals a "lockstep" one (every rank every row); training after the baseline
  is unaffected (same loss as without it), parameters are re-partitioned after every
  evaluation, and only rank 0 writes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from midblock_plugin.evaluation import EvalSettings  # noqa: E402
from midblock_plugin.testing import GSM8K_DIR  # noqa: E402


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (GSM8K_DIR / "test.jsonl").is_file(), reason=f"GSM8K not found at {GSM8K_DIR}"),
]

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "DS_ACCELERATOR": "cpu",
}


def torchrun(script: Path, *args: str, timeout: int = 420) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), *args]
    proc = subprocess.run(cmd, cwd=script.parent, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    return proc


DDP_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch.distributed as dist
    from midblock_plugin.evaluation import EvalSettings, evaluate_model
    from midblock_plugin.testing import tiny_model, tiny_tokenizer

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model, tok = tiny_model("llama", num_layers=4, seed=1), tiny_tokenizer()
    rows = []
    generate = model.generate
    def counting_generate(*args, **kwargs):  # count the rows this rank generates for
        rows.append(int(kwargs["input_ids"].shape[0]))
        return generate(*args, **kwargs)
    model.generate = counting_generate
    settings = EvalSettings(**json.loads(sys.argv[2]))
    report = evaluate_model(model, tok, settings, output_dir=sys.argv[1])
    result = {
        "rank": rank, "generated_rows": sum(rows), "files": report["files"], "distributed": report["distributed"],
        "metrics": report["results"]["gsm8k"]["metrics"], "n_samples": report["results"]["gsm8k"]["n_samples"],
        "responses": {str(s["doc_id"]): s["response"] for s in report["samples"]["gsm8k"]},
    }
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)
    dist.barrier()
    dist.destroy_process_group()
    """
)


def test_ddp_ranks_score_disjoint_shards_and_match_single_process(tmp_path):
    import torch

    from midblock_plugin.evaluation import evaluate_model
    from midblock_plugin.testing import tiny_model, tiny_tokenizer

    fields = dict(limit=5, num_fewshot=1, max_gen_toks=16, batch_size=1, save_samples=True)
    script = tmp_path / "ddp_worker.py"
    script.write_text(DDP_WORKER)
    out = tmp_path / "out"
    out.mkdir()
    torchrun(script, str(out), json.dumps(fields))
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]

    # rank 0 generates for rows 0, 2, 4 and rank 1 for rows 1, 3: 5 generations in all, not 10
    assert [r["generated_rows"] for r in ranks] == [3, 2]
    expected = {
        "mode": "sharded",
        "world_size": 2,
        "partitioner": None,
        "rows_per_rank": [3, 2],
        "generate_calls_per_rank": [3, 2],
    }
    assert all(r["distributed"] == expected for r in ranks)
    assert ranks[0]["files"] and ranks[1]["files"] == []  # only rank 0 writes
    assert ranks[0]["metrics"] == ranks[1]["metrics"] and ranks[0]["responses"] == ranks[1]["responses"]
    written = json.loads((out / "eval" / "gsm8k.json").read_text())
    assert written["n_samples"] == 5 and written["distributed"]["world_size"] == 2

    # torchrun runs each rank with one thread; so does the reference (float sums are order-sensitive
    # and a random tiny model's logits are nearly tied, so greedy decoding would notice)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = evaluate_model(tiny_model("llama", num_layers=4, seed=1), tiny_tokenizer(), EvalSettings(**fields))
    finally:
        torch.set_num_threads(threads)
    assert written["metrics"] == single["results"]["gsm8k"]["metrics"]
    assert ranks[0]["responses"] == {str(s["doc_id"]): s["response"] for s in single["samples"]["gsm8k"]}


ZERO3_WORKER = textwrap.dedent(
    """
    import dataclasses, json, os, sys
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    from accelerate import PartialState
    PartialState(backend="gloo")
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from midblock_plugin.evaluation import EvalCallback, EvalSettings, evaluate_model
    from midblock_plugin.testing import gsm8k_rows, tiny_model, tiny_tokenizer

    out_dir, baseline = sys.argv[1], sys.argv[2] == "baseline"
    ds_config = {
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto", "zero_allow_untested_optimizer": True,
    }
    rows = [{"text": f"Question: {r['question']}\\nAnswer: {r['answer']}"} for r in gsm8k_rows("train", 16)]
    # built before the ZeRO-3 arguments exist, so not under zero.Init: the same weights as
    # tiny_model(seed=3) in a single process (the test's reference), partitioned by deepspeed.initialize
    model = tiny_model("llama", num_layers=2, seed=3)
    args = SFTConfig(
        output_dir=out_dir, use_cpu=True, bf16=False, max_steps=2, report_to=[], gradient_checkpointing=False,
        per_device_train_batch_size=2, max_length=64, save_strategy="no", deepspeed=ds_config,
        accelerator_config={"use_configured_state": True}, logging_steps=1, seed=0,
    )
    tok = tiny_tokenizer()
    trainer = SFTTrainer(model=model, args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tok)
    settings = EvalSettings(limit=5, num_fewshot=1, max_gen_toks=8, batch_size=2, save_samples=True, baseline=baseline)
    callback = EvalCallback(settings, trainer=trainer)
    trainer.add_callback(callback)

    def gathered(model):
        return sum(p.ds_status.name != "NOT_AVAILABLE" for p in model.parameters())

    class Probe(TrainerCallback):  # runs after EvalCallback
        seen = {}
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            self.seen.setdefault("partitioned_numel", sum(p.numel() for p in model.parameters()))
            self.seen.setdefault("gathered_at_first_step", gathered(model))
        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.seen["gathered_after_final"] = gathered(model)
    probe = Probe()
    trainer.add_callback(probe)
    output = trainer.train()
    rank = torch.distributed.get_rank()
    # without the engine: DeepSpeed's coordinator is found on the module itself
    lockstep = dataclasses.replace(settings, partitioned_mode="lockstep")
    again = evaluate_model(trainer.model, tok, lockstep, label="again", print_table=False)
    final = callback.reports["final"]
    base = callback.reports.get("baseline") or final
    result = {
        "rank": rank, "errors": callback.errors, "train_loss": output.training_loss,
        **probe.seen, "gathered_after_again": gathered(trainer.model),
        "distributed": final["distributed"], "again_distributed": again["distributed"], "files": final["files"],
        "baseline_metrics": base["results"]["gsm8k"]["metrics"],
        "baseline_responses": {str(s["doc_id"]): s["response"] for s in base["samples"]["gsm8k"]},
        "metrics": final["results"]["gsm8k"]["metrics"], "again_metrics": again["results"]["gsm8k"]["metrics"],
        "responses": {str(s["doc_id"]): s["response"] for s in final["samples"]["gsm8k"]},
        "again_responses": {str(s["doc_id"]): s["response"] for s in again["samples"]["gsm8k"]},
        "logged": sorted(k for h in trainer.state.log_history for k in h if k.endswith("strict-match/exact_match")),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)
    """
)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")
@pytest.mark.skipif(
    os.environ.get("MIDBLOCK_TEST_ZERO3", "1") == "0", reason="MIDBLOCK_TEST_ZERO3=0 (about a minute on 2 cores)"
)
def test_zero3_sharded_evaluation_inside_training(tmp_path):
    import torch

    from midblock_plugin.evaluation import evaluate_model
    from midblock_plugin.testing import tiny_model, tiny_tokenizer

    script = tmp_path / "zero3_worker.py"
    script.write_text(ZERO3_WORKER)
    runs = {}
    for mode in ("baseline", "plain"):
        out = tmp_path / mode
        out.mkdir()
        torchrun(script, str(out), mode)
        runs[mode] = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]

    with_baseline = runs["baseline"]
    for r in with_baseline:
        assert r["errors"] == {}
        # 5 rows in batches of 2 (2, 2, 1): rank 0 gets batches 0 and 2, rank 1 batch 1 and a dummy
        assert r["distributed"] == {
            "mode": "sharded",
            "world_size": 2,
            "partitioner": "deepspeed-zero3",
            "rows_per_rank": [3, 2],
            "generate_calls_per_rank": [2, 2],
        }
        assert r["again_distributed"] == {
            "mode": "lockstep",
            "world_size": 2,
            "partitioner": "deepspeed-zero3",
            "rows_per_rank": [5, 5],
            "generate_calls_per_rank": [3, 3],
        }
        assert r["partitioned_numel"] == 0  # the evaluation really ran on partitioned parameters
        assert r["gathered_at_first_step"] == 0 and r["gathered_after_final"] == 0 and r["gathered_after_again"] == 0
        assert r["logged"] == [
            "lm_eval/gsm8k/strict-match/exact_match",
            "lm_eval_baseline/gsm8k/strict-match/exact_match",
        ]
        assert r["again_metrics"] == r["metrics"] and r["again_responses"] == r["responses"]
    assert with_baseline[0]["files"] and with_baseline[1]["files"] == []
    assert with_baseline[0]["responses"] == with_baseline[1]["responses"]
    assert (tmp_path / "baseline" / "eval" / "gsm8k.baseline.json").is_file()
    # the baseline evaluation at train start does not change training (RNG and DeepSpeed state restored)
    assert with_baseline[0]["train_loss"] == runs["plain"][0]["train_loss"]
    assert with_baseline[0]["responses"] == runs["plain"][0]["responses"]
    # the sharded baseline (untrained weights) equals a single-process evaluation, generation for generation
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fields = dict(limit=5, num_fewshot=1, max_gen_toks=8, batch_size=2, save_samples=True)
        single = evaluate_model(
            tiny_model("llama", num_layers=2, seed=3), tiny_tokenizer(), EvalSettings(**fields), print_table=False
        )
    finally:
        torch.set_num_threads(threads)
    assert with_baseline[0]["baseline_responses"] == {
        str(s["doc_id"]): s["response"] for s in single["samples"]["gsm8k"]
    }
    assert with_baseline[0]["baseline_metrics"] == single["results"]["gsm8k"]["metrics"]
    assert any(v.strip() for v in with_baseline[0]["baseline_responses"].values())
