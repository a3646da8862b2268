"""The authors' GSM8K evaluation, as their public ``14_*`` scripts score it (``protocol="authors"``).

lm-eval plays no part here: the protocol is re-implemented in a few lines so that it is the
authors' one and nothing else (``protocol="paper"`` is the closest lm-eval equivalent; the
differences are tabled in ``docs/experiments.md``):

* **questions**: the GSM8K test split shuffled with seed 42 as ``datasets.Dataset.shuffle(seed=42)``
  does (NumPy's ``default_rng(42).permutation``: :func:`shuffled_order`), the first 100
  (``limit=N`` takes the first N of the same order instead);
* **prompt**: ``"Question: {question}\\nAnswer:"`` (:func:`midblock_plugin.data.gsm8k.prompt`), zero-shot,
  no chat template, the tokenizer's own special tokens;
* **generation**: Hugging Face ``generate``, greedy (``do_sample=False``), ``max_new_tokens=64``,
  **no stop sequence** (only the model's end-of-sequence token ends an answer early, as in any
  ``generate`` call); batches are left-padded with the tokenizer's pad token (its EOS token
  when it has none), which leaves every answer as it is alone (tested);
* **scoring**: the *last* number of the whole decoded generation (:data:`NUMBER_RE`, commas
  removed: :func:`last_number`) against the number after ``####`` of the gold answer (commas
  removed: :func:`gold_number`), compared as floats (``float(a) == float(b)``, so ``3.0`` equals
  ``3`` and ``1,000`` equals ``1000``); a generation without a number is wrong. Ties: the
  regex scans left to right without overlaps, and the last match wins.

The report has the shape of every other evaluation (:mod:`.results`): ``results["gsm8k"]
["metrics"]["last-number"] = {"exact_match", "exact_match_stderr"}``, the stderr being lm-eval's
for a mean, ``sqrt(p (1 - p) / (n - 1))``, plus ``selection`` (seed, n, the test-file indices
scored). With ``save_samples`` every question is kept: its index in ``test.jsonl``, prompt,
generation, extracted number, gold number and whether it was right.

Distributed: every rank answers every question (100 short answers), in step; under ZeRO-3 /
FSDP ``generate`` runs with ``synced_gpus=True`` so no rank stops early. Rank 0 writes.

>>> last_number("so 1,000 apples. Question: 3 pears")
'3'
>>> gold_number("... #### 1,234"), same_number("1234.0", "1234")
('1234', True)
"""

from __future__ import annotations

import copy
import math
import re
import time
from pathlib import Path
from typing import Any, Sequence

from midblock_plugin.data import gsm8k


#: The seed the authors shuffle the test split with.
SEED = 42
#: How many of the shuffled test questions the authors score.
N_QUESTIONS = 100
#: New tokens per answer.
MAX_NEW_TOKENS = 64
#: The name of the protocol's one filter in the report (``metrics[FILTER]["exact_match"]``).
FILTER = "last-number"
#: A number: optional minus, digits with thousands commas, optional decimal part.
NUMBER_RE = re.compile(r"-?[\d,]*\.?\d+")
#: The task name the report uses (the results are keyed like lm-eval's ``gsm8k``).
TASK = "gsm8k"
#: Version of this protocol's implementation, recorded in every report.
VERSION = "authors/1"


# ------------------------------------------------------------------ selection and scoring
def shuffled_order(n: int, seed: int = SEED) -> list[int]:
    """The row order ``datasets.Dataset.shuffle(seed=seed)`` gives a split of ``n`` rows
    (``np.random.default_rng(seed).permutation(n)``, as ``datasets`` does)."""
    import numpy as np

    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def select_questions(rows: Sequence[dict], n: int | None = N_QUESTIONS, seed: int = SEED) -> list[tuple[int, dict]]:
    """``(index in the split, row)`` of the first ``n`` rows after the seed-``seed`` shuffle
    (all of them with ``n=None``)."""
    order = shuffled_order(len(rows), seed)
    if n is not None:
        if n > len(rows):
            raise ValueError(
                f"limit={n} asks for more questions than the test split has ({len(rows)}); give at most {len(rows)}."
            )
        order = order[:n]
    return [(i, rows[i]) for i in order]


def last_number(text: str) -> str | None:
    """The last number in ``text`` with its commas removed (``None`` when there is none)."""
    found = NUMBER_RE.findall(text or "")
    return found[-1].replace(",", "") if found else None


def gold_number(answer: str) -> str:
    """The number after ``####`` in a GSM8K answer, commas removed."""
    if "####" not in answer:
        raise ValueError(f"a GSM8K answer must end in '#### N'; got {answer[-80:]!r}.")
    return answer.split("####")[-1].strip().replace(",", "")


def same_number(predicted: str | None, gold: str) -> bool:
    """``float(predicted) == float(gold)``; ``False`` for no prediction or one that is not a number."""
    if predicted is None:
        return False
    try:
        return float(predicted) == float(gold)
    except ValueError:
        return False


def mean_stderr(correct: Sequence[bool]) -> float | None:
    """lm-eval's standard error of a mean of 0/1 scores, ``sqrt(p (1 - p) / (n - 1))`` (``None`` for n < 2)."""
    n = len(correct)
    if n < 2:
        return None
    p = sum(map(bool, correct)) / n
    return math.sqrt(p * (1.0 - p) / (n - 1))


# ------------------------------------------------------------------ generation
def _generation_tokenizer(tokenizer: Any) -> Any:
    """A copy of the tokenizer that left-pads with its pad token (its EOS token when it has none)."""
    tok = copy.deepcopy(getattr(tokenizer, "tokenizer", None) or tokenizer)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(
                "the tokenizer has neither a pad nor an EOS token; give it a pad_token to batch the questions."
            )
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    batch_size: int = 8,
    max_new_tokens: int = MAX_NEW_TOKENS,
    synced_gpus: bool = False,
) -> list[str]:
    """Greedy answers to ``prompts`` (the decoded new tokens, special tokens dropped), in order.

    ``model.generate`` with ``do_sample=False``, ``max_new_tokens`` and no stop string; the
    model's own generation settings otherwise apply (its EOS token ends an answer early).
    Batches are left-padded (the attention mask hides the padding)."""
    import torch

    tok = _generation_tokenizer(tokenizer)
    device = next(model.parameters()).device
    out: list[str] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            enc = tok(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True).to(device)
            generated = model.generate(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
                synced_gpus=synced_gpus,
            )
            new = generated[:, enc["input_ids"].shape[1] :]
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
    return out


# ------------------------------------------------------------------ the evaluation
def load_test_rows(settings: Any) -> tuple[list[dict], dict[str, Any]]:
    """The GSM8K test rows (the local directory the settings resolve to, else the hub) and the source entry."""
    where = settings.resolved_data_dir()
    if where is not None:
        rows = gsm8k.read_rows("test", data_dir=where)
        return rows, {
            "kind": "local",
            "gsm8k_family": True,
            "data_dir": str(where),
            "test": str(Path(where) / "test.jsonl"),
        }
    from datasets import load_dataset

    from midblock_plugin.evaluation.runner import EvaluationError

    try:
        rows = list(load_dataset(*gsm8k.HUB_DATASET, split="test"))
    except Exception as exc:
        raise EvaluationError(
            f"protocol='authors' could not load GSM8K from the hub ({gsm8k.HUB_DATASET[0]}): {type(exc).__name__}: {exc}. "
            f"Offline? Pass a local GSM8K directory: data_dir=DIR, --data-dir DIR, or set {gsm8k.ENV}."
        ) from exc
    return rows, {"kind": "hub", "gsm8k_family": True}


def score(
    rows: Sequence[dict], picked: Sequence[tuple[int, dict]], generations: Sequence[str]
) -> list[dict[str, Any]]:
    """One record per question: index, prompt, generation, extracted number, gold number, correct."""
    records = []
    for position, ((index, row), text) in enumerate(zip(picked, generations)):
        extracted, gold = last_number(text), gold_number(row["answer"])
        correct = same_number(extracted, gold)
        records.append(
            {
                "doc_id": index,
                "question_index": index,
                "position": position,
                "prompt": gsm8k.prompt(row),
                "target": row["answer"],
                "response": text,
                "generation": text,
                "extracted": extracted,
                "gold": gold,
                "correct": correct,
                "filtered": {FILTER: extracted},
                "scores": {FILTER: {"exact_match": float(correct)}},
            }
        )
    return records


def task_results(records: Sequence[dict], n_total: int, source: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """The report's ``results`` entry for GSM8K under the authors' protocol."""
    correct = [r["correct"] for r in records]
    acc = sum(correct) / len(correct) if correct else None
    return {
        TASK: {
            "metrics": {FILTER: {"exact_match": acc, "exact_match_stderr": mean_stderr(correct)}},
            "n_samples": len(records),
            "n_samples_total": n_total,
            "num_fewshot": 0,
            "version": VERSION,
            "higher_is_better": {"exact_match": True},
            "source": source,
            "selection": {
                "seed": SEED,
                "n": len(records),
                "limit": limit,
                "shuffle": "datasets Dataset.shuffle(seed=42)",
                "indices": [r["question_index"] for r in records],
            },
        }
    }


def evaluate_authors(
    model: Any,
    tokenizer: Any,
    settings: Any,
    output_dir: Any = None,
    label: str = "final",
    is_main_process: bool | None = None,
    baseline: dict[str, Any] | None = None,
    print_table: bool = True,
    engine: Any = None,
) -> dict[str, Any]:
    """Evaluate ``model`` in memory under the authors' protocol; the report of
    :func:`~midblock_plugin.evaluation.runner.evaluate_model` (same shape, ``files``, ``samples``).

    ``settings.limit`` (an int) scores the first ``limit`` questions of the seed-42 order
    instead of 100; ``settings.batch_size`` batches the generation (``"auto"`` means 8)."""

    from midblock_plugin.evaluation import results
    from midblock_plugin.evaluation.distributed import distributed_context
    from midblock_plugin.evaluation.runner import preserved_rng, restore_after_inference

    if tokenizer is None:
        raise ValueError("tokenizer is None: protocol='authors' needs the tokenizer the model was trained with.")
    from lm_eval.api.model import LM

    if isinstance(model, LM):
        raise ValueError(
            "protocol='authors' generates with Hugging Face generate; give a transformers / PEFT model, not an lm-eval LM "
            "(backend 'vllm' is not available for it: use backend 'hf' or 'in-memory')."
        )
    t0 = time.perf_counter()
    created = results.now()
    rows, source = load_test_rows(settings)
    picked = select_questions(rows, settings.limit if settings.limit is not None else N_QUESTIONS)
    prompts = [gsm8k.prompt(row) for _, row in picked]
    ctx = distributed_context(model, "lockstep")
    ctx["mode"] = "single" if ctx["world_size"] == 1 else "lockstep"  # every rank answers every question
    main = (ctx["rank"] == 0) if is_main_process is None else bool(is_main_process)
    batch = settings.batch_size if isinstance(settings.batch_size, int) else 8
    t_setup = time.perf_counter() - t0

    was_training = getattr(model, "training", None)
    t1 = time.perf_counter()
    try:
        with preserved_rng():
            model.eval()
            generations = generate(model, tokenizer, prompts, batch_size=batch, synced_gpus=bool(ctx["partitioner"]))
    finally:
        restore_after_inference(model, was_training, ctx, engine)
    t_eval = time.perf_counter() - t1
    records = score(rows, picked, generations)
    limit = settings.limit
    ctx["rows_per_rank"] = [len(records)] * ctx["world_size"]

    timings = {
        "task_setup_s": round(t_setup, 3),
        "evaluate_s": round(t_eval, 3),
        "total_s": round(time.perf_counter() - t0, 3),
    }
    report = results.new_report(
        label, [TASK], task_results(records, len(rows), source, limit), settings, timings, model, ctx, created
    )
    results.add_baseline(report, baseline)
    samples = {TASK: records} if settings.save_samples else None
    report["files"] = []
    if output_dir is not None and main:
        report["files"] = [
            str(p) for p in results.write_report(report, Path(output_dir) / settings.output_subdir, samples)
        ]
    if main and print_table:
        print(results.format_table(report), flush=True)
    report["samples"] = samples
    return report
