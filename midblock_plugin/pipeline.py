"""The main job: train mid-block LoRA on GSM8K, evaluate with lm-eval, analyse, report.

``run_job`` does one variant end to end; ``compare`` trains several windows (uniform
``11111`` and mid-block masks) at the same rank budget and seed and writes a markdown
report with a table and figures: the paper's comparison at small scale. Only measured
numbers go into the report.

Presets: ``cpu`` (a demo that finishes in minutes on a laptop) and ``paper`` (the paper's
recipe sizes: bf16, batch 4 x grad-accum 8, 2,000 examples, 1 epoch, 128 tokens);
``auto`` picks ``paper`` when a CUDA GPU is present.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

from midblock_plugin.config import MidBlockConfig
from midblock_plugin.data import gsm8k

PRESETS = {
    # examples, steps (-1 = one epoch), batch, grad-accum, lr, eval limit, held-out rows, analysis prompts
    "cpu": dict(num_examples=64, max_steps=16, batch_size=4, grad_accum=1, lr=5e-4, eval_limit=10, heldout=32, analysis_prompts=32, bf16=False),
    "paper": dict(num_examples=2000, max_steps=-1, batch_size=4, grad_accum=8, lr=1e-4, eval_limit=None, heldout=200, analysis_prompts=200, bf16=True),
}
DEFAULT_VARIANTS = ("11111", "01110", "01000", "00001")


@dataclass
class JobOptions:
    """Options of ``midblock run`` / ``midblock compare`` (``None`` = from the preset)."""

    output_dir: str
    model: str = "smollm2-135m-instruct"
    data_dir: Optional[str] = None
    preset: str = "auto"
    segments: Optional[str] = "01110"
    rank: int = 16
    lora_alpha: Optional[float] = None
    alpha_policy: str = "ratio"
    num_examples: Optional[int] = None
    max_steps: Optional[int] = None
    batch_size: Optional[int] = None
    grad_accum: Optional[int] = None
    lr: Optional[float] = None
    max_length: int = 128
    seed: int = 42
    eval_limit: Optional[int] = None
    num_fewshot: Optional[int] = None
    max_gen_toks: int = 64
    eval_batch_size: int = 8
    heldout: Optional[int] = None
    analysis_prompts: Optional[int] = None
    bf16: Optional[bool] = None
    skip_eval: bool = False
    skip_analysis: bool = False
    variants: tuple = DEFAULT_VARIANTS

    def resolved(self) -> "JobOptions":
        preset = self.preset
        if preset == "auto":
            import torch

            preset = "paper" if torch.cuda.is_available() else "cpu"
        if preset not in PRESETS:
            raise ValueError(f"--preset {self.preset!r} is not one of auto, {', '.join(PRESETS)}.")
        values = {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in PRESETS[preset].items()}
        return replace(self, preset=preset, **values)

    def midblock_config(self, segments: Optional[str] = None) -> MidBlockConfig:
        return MidBlockConfig(segments=segments or self.segments, rank=self.rank, lora_alpha=self.lora_alpha,
                              alpha_policy=self.alpha_policy)


# ------------------------------------------------------------------------------ data


# ------------------------------------------------------------------------------ measures


class PeakMemory:
    """Peak memory while a block runs: CUDA allocator peak, else sampled process RSS."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            proc = psutil.Process()
            self.peak = proc.memory_info().rss

            def sample():
                while not self._stop.wait(self.interval):
                    self.peak = max(self.peak, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
        self.kind = "cuda_max_allocated" if self.cuda else "process_rss"
        return False


def heldout_answer_loss(model, tok, rows: list[dict], max_length: int = 256, batch_size: int = 8) -> float:
    """Mean token loss of the gold answers of held-out rows (the question is context only).

    A continuous measure that tells variants apart where GSM8K accuracy of a small model
    sits near zero (offline-recipes.md)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            for row in chunk:
                p_ids = tok(gsm8k.prompt(row), add_special_tokens=False)["input_ids"]
                full = tok(gsm8k.training_text(row), add_special_tokens=False)["input_ids"][:max_length]
                if len(full) <= len(p_ids):
                    continue
                ids = torch.tensor([full], device=device)
                labels = ids.clone()
                labels[:, : len(p_ids)] = -100
                out = model(input_ids=ids, labels=labels)
                n = int((labels[:, 1:] != -100).sum())
                total += float(out.loss) * n
                count += n
    model.train()
    return total / max(count, 1)


# ------------------------------------------------------------------------------ one variant


def _load_base(opts: JobOptions, out: Path, log):
    """(model dir, model, tokenizer). ``tiny`` builds a tiny random Llama (tests, no download)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from midblock_plugin.models import resolve_model

    if opts.model == "tiny":
        from midblock_plugin.testing import save_tiny

        model_dir = out / "tiny-base"
        if not (model_dir / "config.json").exists():
            save_tiny(model_dir, "llama", num_layers=10, seed=0)
        model_dir = str(model_dir)
    else:
        model_dir = resolve_model(opts.model, log=log)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    dtype = torch.bfloat16 if opts.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    return model_dir, model, tok


class _StepTimer:
    def __init__(self):
        from transformers import TrainerCallback

        outer = self

        class CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                outer._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                outer.times.append(time.perf_counter() - outer._t)

        self.times: list[float] = []
        self.callback = CB()

    @property
    def median(self) -> Optional[float]:
        if not self.times:
            return None
        s = sorted(self.times[1:] or self.times)  # the first step includes warm-up
        return s[len(s) // 2]


def train_variant(opts: JobOptions, segments: str, out: Path, train_rows: list[dict], heldout_rows: list[dict], log=print,
                  base_eval: Optional[dict] = None) -> dict[str, Any]:
    """Train one window, evaluate it, and return its measured record."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from midblock_plugin.plan import build_plan
    from midblock_plugin.training import MidBlockCallback

    mb = opts.midblock_config(segments)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts.seed)
    model_dir, model, tok = _load_base(opts, out.parent, log)
    cpu = not torch.cuda.is_available()
    args = SFTConfig(
        output_dir=str(out), max_steps=opts.max_steps, num_train_epochs=1, per_device_train_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum, learning_rate=opts.lr, max_length=opts.max_length,
        bf16=bool(opts.bf16), use_cpu=cpu, seed=opts.seed, logging_steps=1, save_strategy="no", report_to=[],
        gradient_checkpointing=not cpu, disable_tqdm=False,
    )
    timer = _StepTimer()
    plan = build_plan(model, mb)
    cb = MidBlockCallback(plan=plan)
    trainer = SFTTrainer(
        model=model, args=args, processing_class=tok,
        train_dataset=Dataset.from_list([{"text": gsm8k.training_text(r)} for r in train_rows[: opts.num_examples]]),
        peft_config=plan.lora_config(), callbacks=[cb, timer.callback],
    )
    cb.bind(trainer)
    with PeakMemory() as mem:
        trainer.train()
    trainer.save_model(str(out / "adapter"))
    tok.save_pretrained(str(out / "adapter"))
    record: dict[str, Any] = {
        "variant": segments, "layers": cb.plan.layers, "window": cb.plan.window, "rank": plan.layer_rank,
        "lora_alpha": cb.plan.lora_alpha, "trainable_params": cb.plan.trainable_params,
        "uniform_lora_params": cb.plan.uniform_lora_params, "steps": trainer.state.global_step,
        "step_time_s": timer.median, "peak_memory_bytes": mem.peak, "peak_memory_kind": mem.kind,
        "loss_curve": [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e],
        "adapter_dir": str(out / "adapter"), "base_dir": model_dir,
    }
    drift = json.loads((out / "midblock" / "drift.json").read_text())
    record["drift"] = drift["history"][-1]["weight_change"] if drift["history"] else {}
    record["heldout_loss"] = heldout_answer_loss(trainer.model, tok, heldout_rows, max_length=opts.max_length * 2)
    if not opts.skip_eval:
        from midblock_plugin.evaluation import evaluate_model

        report = evaluate_model(trainer.model, tok, _eval_settings(opts), output_dir=str(out), label="final", baseline=base_eval)
        record["eval"] = _gsm8k_summary(report)
    del trainer, model
    return record


def _eval_settings(opts: JobOptions):
    from midblock_plugin.evaluation import EvalSettings

    return EvalSettings(limit=opts.eval_limit, num_fewshot=opts.num_fewshot, max_gen_toks=opts.max_gen_toks,
                        batch_size=opts.eval_batch_size, data_dir=opts.data_dir)


def _gsm8k_summary(report: dict) -> dict:
    res = report["results"].get("gsm8k") or next(iter(report["results"].values()))
    m = res["metrics"]
    out = {"n_samples": res.get("n_samples"), "num_fewshot": res.get("num_fewshot"), "limit": report.get("limit")}
    for filt in ("strict-match", "flexible-extract"):
        if filt in m:
            out[filt] = {"exact_match": m[filt].get("exact_match"), "stderr": m[filt].get("exact_match_stderr")}
    return out


def evaluate_base(opts: JobOptions, out: Path, heldout_rows: list[dict], log=print) -> dict[str, Any]:
    """The untrained model's held-out loss and GSM8K score: the reference row of the report."""
    _, model, tok = _load_base(opts, out, log)
    rec: dict[str, Any] = {"variant": "base (no tuning)", "heldout_loss": heldout_answer_loss(model, tok, heldout_rows, max_length=opts.max_length * 2)}
    if not opts.skip_eval:
        from midblock_plugin.evaluation import evaluate_model

        report = evaluate_model(model, tok, _eval_settings(opts), output_dir=str(out / "base"), label="baseline")
        rec["eval"] = _gsm8k_summary(report)
        rec["eval_report"] = report
    return rec


def analyse(opts: JobOptions, record: dict, out: Path) -> dict[str, Any]:
    from midblock_plugin.analysis import AnalysisConfig, run_analysis, write_reports

    cfg = AnalysisConfig(base=record["base_dir"], tuned=record["adapter_dir"], prompts="gsm8k", data_dir=opts.data_dir,
                         num_prompts=opts.analysis_prompts, max_length=opts.max_length)
    doc = run_analysis(cfg).to_dict()
    paths = write_reports(doc, out)
    return {"paths": paths, "recommendation": doc["recommendation"]}


# ------------------------------------------------------------------------------ jobs


def run_job(opts: JobOptions, log=print) -> Path:
    """One mid-block variant end to end; returns the report path."""
    opts = opts.resolved()
    out = Path(opts.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    opts.midblock_config()  # validate before any work
    if not opts.skip_eval:
        _eval_settings(opts)
    train_rows, test_rows, source = gsm8k.load(opts.data_dir, log)
    heldout = test_rows[-opts.heldout:]
    base = evaluate_base(opts, out, heldout, log)
    rec = train_variant(opts, opts.segments, out / f"variant-{opts.segments}", train_rows, heldout, log, base.get("eval_report"))
    records = [rec]
    analysis = None if opts.skip_analysis else analyse(opts, rec, out / "analysis")
    return write_report(opts, source, base, records, analysis, out, title="midblock: mid-block LoRA on GSM8K")


def compare(opts: JobOptions, log=print) -> Path:
    """Several windows at the same rank budget and seed; one report."""
    opts = opts.resolved()
    out = Path(opts.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for v in opts.variants:
        opts.midblock_config(v)  # every mask is validated before any work
    if not opts.skip_eval:
        _eval_settings(opts)
    train_rows, test_rows, source = gsm8k.load(opts.data_dir, log)
    heldout = test_rows[-opts.heldout:]
    base = evaluate_base(opts, out, heldout, log)
    records = []
    for v in opts.variants:
        log(f"midblock compare: variant {v} ({len(records) + 1}/{len(opts.variants)})")
        records.append(train_variant(opts, v, out / f"variant-{v}", train_rows, heldout, log, base.get("eval_report")))
    mid = next((r for r in records if r["variant"] == (opts.segments or "01110")), records[-1])
    analysis = None if opts.skip_analysis else analyse(opts, mid, out / "analysis")
    return write_report(opts, source, base, records, analysis, out, title="midblock compare: uniform vs mid-block LoRA at one rank budget")


# ------------------------------------------------------------------------------ report


def _plots(records: list[dict], out: Path, num_layers: int) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for r in records:
        xs, ys = zip(*r["loss_curve"]) if r["loss_curve"] else ([], [])
        ax.plot(xs, ys, label=r["variant"], marker=".")
    ax.set_xlabel("step"), ax.set_ylabel("training loss"), ax.set_title("Training loss"), ax.legend()
    fig.tight_layout(), fig.savefig(out / "loss_curves.png", dpi=110), plt.close(fig)
    paths["loss"] = "loss_curves.png"
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for r in records:
        xs = list(range(num_layers))
        ax.plot(xs, [r["drift"].get(str(i), 0.0) for i in xs], label=r["variant"], marker="o", ms=3)
    ax.set_xlabel("decoder layer"), ax.set_ylabel("||W_t - W_0|| / ||W_0||"), ax.set_title("Per-layer drift at the end of training")
    ax.legend(), fig.tight_layout(), fig.savefig(out / "drift.png", dpi=110), plt.close(fig)
    paths["drift"] = "drift.png"
    return paths


def _fmt_acc(ev: Optional[dict], filt: str) -> str:
    if not ev or filt not in ev or ev[filt]["exact_match"] is None:
        return "not run"
    se = ev[filt]["stderr"]
    return f"{ev[filt]['exact_match']:.3f} ± {se:.3f}" if se is not None and math.isfinite(se) else f"{ev[filt]['exact_match']:.3f}"


def write_report(opts: JobOptions, source: str, base: dict, records: list[dict], analysis: Optional[dict], out: Path, title: str) -> Path:
    plan0 = json.loads((Path(records[0]["adapter_dir"]).parent / "midblock" / "plan.json").read_text())
    num_layers = plan0["num_layers"]
    figs = _plots(records, out, num_layers)
    n = (records[0].get("eval") or {}).get("n_samples")
    lines = [
        f"# {title}", "",
        "Every number below was measured in this run; nothing is carried over from the paper.", "",
        "## Setup", "",
        f"- model: `{opts.model}` ({plan0['architecture']}, L={num_layers}); data: {source}",
        f"- preset `{opts.preset}`: {opts.num_examples} training examples, max steps {opts.max_steps}, batch {opts.batch_size} x grad-accum {opts.grad_accum}, "
        f"lr {opts.lr}, {opts.max_length} tokens, seed {opts.seed}, bf16 {bool(opts.bf16)}",
        f"- LoRA on attention projections; uniform baseline rank r={opts.rank}, matched budget (rank floor(r*L/n)), alpha policy `{opts.alpha_policy}`",
        f"- GSM8K via lm-eval's own task: {('limit ' + str(opts.eval_limit)) if opts.eval_limit else 'full test set'}, "
        f"{'task default' if opts.num_fewshot is None else opts.num_fewshot}-shot, greedy, {opts.max_gen_toks} new tokens; "
        f"held-out loss = mean token loss of the gold answers of the last {opts.heldout} GSM8K test rows", "",
        "## Results", "",
        "| variant | layers | rank | trainable params | GSM8K strict | GSM8K flexible | n | held-out answer loss | step time (s) | peak memory (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {base['variant']} | – | – | 0 | {_fmt_acc(base.get('eval'), 'strict-match')} | {_fmt_acc(base.get('eval'), 'flexible-extract')} | "
        f"{(base.get('eval') or {}).get('n_samples', '–')} | {base['heldout_loss']:.4f} | – | – |",
    ]
    for r in records:
        ev = r.get("eval")
        lines.append(
            f"| `{r['variant']}` | {r['window']} | {r['rank']} | {r['trainable_params']:,} | {_fmt_acc(ev, 'strict-match')} | "
            f"{_fmt_acc(ev, 'flexible-extract')} | {(ev or {}).get('n_samples', '–')} | {r['heldout_loss']:.4f} | "
            f"{r['step_time_s']:.3f} | {r['peak_memory_bytes'] / 1024**3:.2f} |"
        )
    lines += [
        "",
        f"Accuracy is exact match ± its standard error over n={n} questions; with n this small and a model this size, "
        "differences in accuracy are not significant unless the intervals separate. Step time is the median training step; "
        f"peak memory is {records[0]['peak_memory_kind'].replace('_', ' ')} during training.", "",
        "## Training loss", "", f"![loss curves]({figs['loss']})", "",
        "## Per-layer drift", "", f"![drift]({figs['drift']})", "",
        "Relative weight change of each layer's trained matrices at the end of training (zero outside a variant's window).", "",
        "## Layer-wise analysis", "",
    ]
    if analysis:
        rec = analysis["recommendation"]
        rel = os.path.relpath(analysis["paths"]["png"], out)
        lines += [
            f"Base vs tuned (`{records[0]['variant'] if len(records) == 1 else opts.segments}`) on GSM8K prompts: "
            f"[analysis.json]({os.path.relpath(analysis['paths']['json'], out)}), [analysis.csv]({os.path.relpath(analysis['paths']['csv'], out)}).", "",
            f"![analysis]({rel})", "",
            f"Recommended window: layers {rec['window']} (mask {rec.get('segments')}); rule: {rec['rule']}", "",
        ]
    else:
        lines += ["Skipped (--skip-analysis).", ""]
    report = out / "report.md"
    (out / "results.json").write_text(json.dumps({"options": asdict(opts), "source": source, "base": {k: v for k, v in base.items() if k != "eval_report"},
                                                  "variants": records, "analysis": analysis}, indent=2, default=str))
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report
