"""One variant: load the base model, train a window with TRL, measure it, evaluate it, analyse it.

Every record (a :class:`~.record.SeedRecord`) is built from objects in memory (the plan, the
callback's drift monitor, the trainer's state); the files written on the way
(``midblock/plan.json``, ``drift.json``, the adapter) are outputs, never read back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from midblock_plugin import io, storage
from midblock_plugin.data import gsm8k
from midblock_plugin.experiments.console import stage
from midblock_plugin.experiments.measures import PeakMemory, StepTimer, heldout_row_losses
from midblock_plugin.experiments.options import UNIFORM, JobOptions
from midblock_plugin.experiments.record import SeedRecord


if TYPE_CHECKING:
    from midblock_plugin.plan import MidBlockPlan


def load_base(opts: JobOptions, out: Path, log):
    """(model dir, model, tokenizer) of ``opts.model`` (the default model, a directory or a hub id)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from midblock_plugin.models import resolve_model

    model_dir = resolve_model(opts.model, log=log)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    dtype = torch.bfloat16 if opts.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    return model_dir, model, tok


def _checkpointing(config_class: type, on: bool) -> dict[str, bool]:
    """The activation-checkpointing argument of ``config_class``: ``activation_checkpointing`` where
    it exists (transformers 5; its old name ``gradient_checkpointing`` then warns), else the old name."""
    names = getattr(config_class, "__dataclass_fields__", {})
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": on}


def _mean_loss(sums: list[float], counts: list[int]) -> str:
    """The mean token loss of per-row summed losses, and the rows it is over, in words."""
    return f"{sum(sums) / max(sum(counts), 1):.4f} on {len(sums)} rows"


def final_drift(monitor) -> dict[str, Optional[float]]:
    """Per-layer relative weight change at the last recorded step, as ``drift.json`` holds it
    (string layer keys, NaN as ``None``); ``{}`` without a monitor or history."""
    if monitor is None or not monitor.history:
        return {}
    return io.json_safe(monitor.to_json_dict()["history"][-1]["weight_change"])


def gsm8k_summary(report: dict) -> dict:
    """Accuracy, stderr, n and few-shot count of an evaluation report's GSM8K task, per filter
    (``strict-match`` / ``flexible-extract`` of lm-eval, ``last-number`` of the authors' protocol)."""
    res = report["results"].get("gsm8k") or next(iter(report["results"].values()))
    m = res["metrics"]
    out = {"n_samples": res.get("n_samples"), "num_fewshot": res.get("num_fewshot"), "limit": report.get("limit")}
    for filt in m:
        if isinstance(m[filt], dict) and "exact_match" in m[filt]:
            out[filt] = {"exact_match": m[filt].get("exact_match"), "stderr": m[filt].get("exact_match_stderr")}
    return out


def gsm8k_correct(report: dict) -> Optional[dict[str, list[int]]]:
    """Per filter, 0/1 per scored GSM8K question in question order, from the report's saved samples
    (``EvalSettings(save_samples=True)``); ``None`` without samples."""
    samples = report.get("samples") or {}
    rows = samples.get("gsm8k") or next(iter(samples.values()), None)
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: r.get("doc_id", 0))
    filters = [f for f in rows[0].get("scores", {}) if "exact_match" in (rows[0]["scores"][f] or {})]
    return {f: [int(float((r["scores"].get(f) or {}).get("exact_match") or 0) > 0) for r in rows] for f in filters}


def _row_losses(
    model, tok, rows: list[dict], opts: JobOptions, progress: Optional[str] = None
) -> tuple[list[float], list[int]]:
    """Per row: the summed answer-token loss and the answer tokens (for pairing row by row)."""
    return heldout_row_losses(model, tok, rows, max_length=opts.max_length * 2, progress=progress)


def _heldout(rec: dict[str, Any], model, tok, rows: list[dict], opts: JobOptions) -> None:
    """Held-out answer loss of the base ``model``: the mean, and per row (summed loss, answer tokens)."""
    sums, counts = _row_losses(model, tok, rows, opts, progress="base model: held-out answer loss")
    rec["heldout_loss"] = sum(sums) / max(sum(counts), 1)
    rec["heldout_row_loss"] = sums
    rec["heldout_row_tokens"] = counts


def train_variant(
    opts: JobOptions,
    segments: str,
    out: Path,
    train_rows: list[dict],
    heldout_rows: list[dict],
    log=print,
    base_eval: Optional[dict] = None,
    general_blocks: Optional[list] = None,
    validation_rows: Optional[list[dict]] = None,
    measure: bool = True,
) -> tuple[SeedRecord, "MidBlockPlan"]:
    """Train one window with seed ``opts.seed`` at ``opts.lr`` on the first ``opts.num_examples`` of
    ``train_rows``, measure it (held-out loss per row, validation loss per row unless
    ``validation_rows`` is ``None``, forgetting on ``general_blocks`` unless ``None``), evaluate it
    (unless ``opts.skip_eval``); return its record and the plan it was trained with. ``measure=False``
    only trains and saves the adapter (the uniform model a ``midblock run`` analyses)."""
    import torch
    from datasets import Dataset
    from transformers import ProgressCallback
    from trl import SFTConfig, SFTTrainer

    from midblock_plugin.plan import build_plan
    from midblock_plugin.training import MidBlockCallback
    from midblock_plugin.training.progress import ConsoleProgress

    mb = opts.midblock_config(segments)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts.seed)
    model_dir, model, tok = load_base(opts, out.parent, log)
    cpu = not torch.cuda.is_available()
    args = SFTConfig(
        output_dir=str(out),
        max_steps=opts.max_steps,
        num_train_epochs=1,
        per_device_train_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum,
        learning_rate=opts.lr,
        max_length=opts.max_length,
        bf16=bool(opts.bf16),
        use_cpu=cpu,
        seed=opts.seed,
        data_seed=opts.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        **_checkpointing(SFTConfig, not cpu),
        disable_tqdm=False,
    )
    timer = StepTimer()
    plan = build_plan(model, mb)
    cb = MidBlockCallback(plan=plan)
    trainer = SFTTrainer(
        model=model,
        args=args,
        processing_class=tok,
        train_dataset=Dataset.from_list([{"text": gsm8k.training_text(r)} for r in train_rows[: opts.num_examples]]),
        peft_config=plan.lora_config(),
        callbacks=[cb, timer.callback],
    )
    trainer.pop_callback(ProgressCallback)  # transformers' bar and its long line per step: ours instead
    trainer.add_callback(ConsoleProgress(verbose=opts.verbose, desc=f"training {segments}"))
    cb.bind(trainer)
    need = storage.adapter_bytes(plan.trainable_params, model_dir)
    storage.check_free_space(out, need, f"the adapter of variant {segments}")  # before training, not after
    with PeakMemory() as mem:
        trainer.train()
    plan = cb.plan
    from midblock_plugin.training.model_card import write_model_card

    with storage.atomic_directory(out / "adapter", need=need) as staging:  # whole or absent, even if killed
        trainer.save_model(str(staging))
        tok.save_pretrained(str(staging))
        write_model_card(staging, plan)
    record = SeedRecord(
        variant=segments,
        seed=opts.seed,
        lr=float(opts.lr),
        layers=list(plan.layers),
        window=plan.window,
        rank=plan.layer_rank,
        lora_alpha=plan.lora_alpha,
        trainable_params=plan.trainable_params,
        uniform_lora_params=plan.uniform_lora_params,
        steps=trainer.state.global_step,
        step_time_s=timer.median,
        peak_memory_bytes=mem.peak,
        peak_memory_kind=mem.kind,
        loss_curve=[(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e],
        adapter_dir=str(out / "adapter"),
        base_dir=str(model_dir),
        drift=final_drift(cb.monitor),
    )
    if not measure:
        del trainer, model
        return record, plan
    with stage(log) as done:
        record.heldout_row_loss, record.heldout_row_tokens = _row_losses(
            trainer.model, tok, heldout_rows, opts, progress=f"{segments}: held-out answer loss"
        )
        done(f"{segments}: held-out answer loss {_mean_loss(record.heldout_row_loss, record.heldout_row_tokens)}")
    if validation_rows is not None:
        with stage(log) as done:
            record.validation_row_loss, record.validation_row_tokens = _row_losses(
                trainer.model, tok, validation_rows, opts, progress=f"{segments}: validation answer loss"
            )
            done(
                f"{segments}: validation answer loss "
                f"{_mean_loss(record.validation_row_loss, record.validation_row_tokens)}"
            )
    if general_blocks is not None:
        from midblock_plugin.experiments.forgetting import measure as forgetting

        with stage(log) as done:
            found = forgetting(
                trainer.model,
                general_blocks,
                batch_size=opts.eval_batch_size // 2 or 1,
                progress=f"{segments}: forgetting (KL to the base on general text)",
            )
            per_block = found["per_block"]
            record.general_delta_loss, record.general_kl = per_block["delta_loss"], per_block["kl"]
            done(
                f"{segments}: forgetting KL(base || tuned) {found['kl']:.5f}, general-text loss change "
                f"{found['delta_loss']:+.4f} on {found['blocks']} blocks"
            )
    if not opts.skip_eval:
        from midblock_plugin.evaluation import evaluate_model

        report = evaluate_model(
            trainer.model, tok, opts.eval_settings(), output_dir=str(out), label="final", baseline=base_eval
        )
        record.eval, record.gsm8k_correct = gsm8k_summary(report), gsm8k_correct(report)
    del trainer, model
    return record, plan


def evaluate_base(
    opts: JobOptions, out: Path, heldout_rows: list[dict], log=print, general: Optional[tuple[str, str]] = None
) -> dict[str, Any]:
    """The untrained model's held-out loss (per row) and GSM8K score: the reference row of the report.

    ``general``: ``(text, description)`` of the forgetting measure's general text; its blocks are
    tokenized here (``general_blocks``) and the base model's loss on them recorded."""
    _, model, tok = load_base(opts, out, log)
    rec: dict[str, Any] = {"variant": "base (no tuning)"}
    with stage(log) as done:
        _heldout(rec, model, tok, heldout_rows, opts)
        done(f"base model: held-out answer loss {rec['heldout_loss']:.4f} on {len(heldout_rows)} GSM8K test rows")
    if general is not None:
        from midblock_plugin.experiments.forgetting import blocks

        with stage(log) as done:
            rec["general_blocks"] = blocks(
                tok, general[0], block_tokens=opts.max_length, num_blocks=opts.forgetting_blocks
            )
            from midblock_plugin.experiments.forgetting import block_losses

            losses = block_losses(
                model,
                rec["general_blocks"],
                batch_size=opts.eval_batch_size // 2 or 1,
                progress="base model: general-text loss (the forgetting reference)",
            )
            rec["general_text"] = {
                "source": general[1],
                "blocks": len(losses),
                "block_tokens": opts.max_length,
                "loss": sum(losses) / len(losses),
            }
            done(f"base model: general-text loss {rec['general_text']['loss']:.4f} on {len(losses)} blocks")
    if not opts.skip_eval:
        from midblock_plugin.evaluation import evaluate_model

        report = evaluate_model(model, tok, opts.eval_settings(), output_dir=str(out / "base"), label="baseline")
        rec["eval"] = gsm8k_summary(report)
        rec["gsm8k_correct"] = gsm8k_correct(report)
        report.pop("samples", None)  # kept per question above; the report is the trained models' baseline
        rec["eval_report"] = report
    return rec


def analyse(opts: JobOptions, record: SeedRecord, out: Path, figure: bool = True) -> dict[str, Any]:
    """The layer-wise analysis of base vs the uniform (``11111``) model of ``record``, written under
    ``out`` (``analysis.png`` only with ``figure``). A window-tuned model is never analysed: its
    untrained layers cannot show change, so a recommendation from it would be circular."""
    from midblock_plugin.analysis import AnalysisConfig, run_analysis, write_reports

    if record.variant != UNIFORM:
        raise ValueError(f"the layer-wise analysis runs on the uniform model {UNIFORM}, not on {record.variant!r}.")
    cfg = AnalysisConfig(
        base=record.base_dir,
        tuned=record.adapter_dir,
        prompts="gsm8k",
        data_dir=opts.data_dir,
        num_prompts=opts.analysis_prompts,
        max_length=opts.max_length,
        tuned_variant=UNIFORM,
    )
    doc = run_analysis(cfg).to_dict()
    try:
        paths = write_reports(doc, out, figure=figure)
    except ImportError:  # matplotlib present but broken: keep the numbers, skip the figure
        paths = write_reports(doc, out, figure=False)
    return {
        "variant": record.variant,
        "tuned_variant": doc.get("tuned_variant", UNIFORM),
        "seed": record.seed,
        "lr": record.lr,
        "adapter_dir": record.adapter_dir,
        "paths": paths,
        "recommendation": doc["recommendation"],
        "recommended_layers": doc.get("recommended_layers", doc["recommendation"].get("layers")),
    }
