"""``AnalysisConfig``: what ``midblock analyze`` measures and how, validated on construction.

Import-cheap (no torch): the command's flags are generated from these fields
(:func:`midblock_plugin.cli.fields.add_dataclass_arguments`) when ``midblock --help`` builds its
parser. The model-facing work is :mod:`.run`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from midblock_plugin import architecture, checks
from midblock_plugin.analysis.prompts import check_prompt_source
from midblock_plugin.analysis.recommend import MIN_OBJECTIVE, exact_segment_mask
from midblock_plugin.choices import AnalysisDtype, PairSignal, Split, StatsDtype
from midblock_plugin.choices import values as choice_values


DTYPES = choice_values(AnalysisDtype)
#: Two-model signals the window search can read (``--signal``), default first.
PAIR_SIGNALS = choice_values(PairSignal)
STATS_DTYPES = choice_values(StatsDtype)


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec


def check_model_path(spec: str, flag: str) -> None:
    """Raise ``FileNotFoundError`` if ``spec`` is a local path that is not a model directory."""
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{flag} {spec!r} is a directory without config.json; give a model directory "
                "saved with save_pretrained (config.json + weights)."
            )
    elif path.exists() or _looks_like_path(spec):
        raise FileNotFoundError(
            f"{flag} {spec!r}: no such model directory; give a directory saved with save_pretrained."
        )


def detect_tuned_kind(spec: str) -> str:
    """``"adapter"`` (adapter_config.json) or ``"model"`` (config.json) for a TUNED directory."""
    path = Path(os.path.expanduser(spec))
    if not path.is_dir():
        raise FileNotFoundError(
            f"TUNED {spec!r}: no such directory; give a full model directory (config.json) or a "
            "PEFT adapter directory (adapter_config.json) saved with save_pretrained."
        )
    if (path / "adapter_config.json").is_file():
        return "adapter"
    if (path / "config.json").is_file():
        return "model"
    raise FileNotFoundError(
        f"TUNED {spec!r} has neither adapter_config.json nor config.json; give a full model "
        "directory or a PEFT adapter directory saved with save_pretrained."
    )


@dataclass
class AnalysisConfig:
    """What ``midblock analyze`` measures and how.

    Attributes:
        base: the base model (directory or cached hub id).
        tuned: a tuned model directory or a PEFT adapter directory; None for single-model mode.
        prompts: ``"builtin"``, ``"gsm8k"`` or a JSONL path (``text`` or chat ``messages`` rows).
        data_dir: directory of GSM8K ``{split}.jsonl`` (default: ``$MIDBLOCK_GSM8K_DIR``).
        split: GSM8K split to read.
        num_prompts: at most this many prompts (at least 2 are needed).
        max_length: tokens per prompt (longer prompts are truncated).
        batch_size: prompts per forward pass.
        dtype: model dtype; ``auto`` = the checkpoint dtype on GPU, float32 on CPU.
        device: ``auto`` (CUDA if present), ``cpu``, ``cuda``, ``cuda:1``, ...
        stats_dtype: dtype of the D x D accumulators (float64; float32 halves their memory).
        tokenizer: tokenizer directory (default: BASE).
        early_exit: compute early-exit agreement (final norm + LM head at each layer).
        weight_stats: compute weight change (two models) or spectral SNR (one model).
        progress: show a tqdm progress bar on stderr.
        signal: the two-model per-layer signal the window search reads: ``own_output`` (default),
            ``weight`` or ``inherited_cka`` (the old, inherited signal; for comparison only).
        tuned_variant: what TUNED is, e.g. ``"11111"`` (uniform LoRA) or ``"full"``; detected from
            the adapter when not given. A mask with a ``0`` (a window-tuned model) gets no recommendation.
        min_objective: least ``captured - used`` share a window must reach (else the paper default).
        probe: also run the pre-training gradient probe on BASE and record its window.
        probe_batches: calibration batches of the probe (``batch_size`` prompts each).
        tuned_layers: (set on validation) the layers the TUNED adapter trains; None = every layer or a full model.
        detected_variant: (set on validation) ``"11111"``, a mask / layer list, or ``"full"`` for a full model.
    """

    base: str = field(
        metadata={
            "positional": True,
            "metavar": "BASE",
            "help": "base model directory (save_pretrained) or cached hub id",
        }
    )
    tuned: Optional[str] = field(
        default=None,
        metadata={
            "positional": True,
            "nargs": "?",
            "metavar": "TUNED",
            "help": "tuned model directory, or a PEFT adapter directory applied to BASE; omit for single-model mode",
        },
    )
    prompts: str = field(
        default="builtin",
        metadata={
            "group": "prompts",
            "help": "'builtin' (40 varied sentences), 'gsm8k', or a JSONL file with 'text' or chat 'messages' rows",
        },
    )
    data_dir: Optional[str] = field(
        default=None,
        metadata={
            "group": "prompts",
            "help": "directory with GSM8K train.jsonl/test.jsonl (default: $MIDBLOCK_GSM8K_DIR)",
        },
    )
    split: Split = field(default="test", metadata={"group": "prompts", "help": "GSM8K split"})
    num_prompts: int = field(default=200, metadata={"group": "prompts", "help": "at most this many prompts"})
    max_length: int = field(
        default=128, metadata={"group": "prompts", "help": "tokens per prompt, longer ones truncated"}
    )
    batch_size: int = field(default=8, metadata={"group": "runtime", "help": "prompts per forward pass"})
    dtype: AnalysisDtype = field(
        default="auto",
        metadata={"group": "runtime", "help": "model dtype; auto = checkpoint dtype on GPU, float32 on CPU"},
    )
    device: str = field(
        default="auto", metadata={"group": "runtime", "help": "auto (CUDA if present), cpu, cuda, cuda:N"}
    )
    stats_dtype: StatsDtype = field(
        default="float64",
        metadata={"group": "runtime", "help": "dtype of the D x D accumulators; float32 halves their memory"},
    )
    tokenizer: Optional[str] = field(
        default=None, metadata={"group": "prompts", "help": "tokenizer directory (default: BASE)"}
    )
    early_exit: bool = field(
        default=True,
        metadata={
            "group": "runtime",
            "help": "early-exit agreement (--no-early-exit saves L LM-head passes per batch; on CPU with "
            "a large vocabulary it can double the run time)",
        },
    )
    weight_stats: bool = field(
        default=True,
        metadata={
            "group": "runtime",
            "help": "weight change (two models) / spectral SNR (one model; an SVD per matrix)",
        },
    )
    progress: bool = field(
        default=True, metadata={"group": "runtime", "flag": "--quiet", "negate": True, "help": "no progress bar"}
    )
    signal: PairSignal = field(
        default="own_output",
        metadata={
            "group": "window",
            "help": "two-model per-layer signal the window search reads: own_output = the layer's own "
            "output change on base inputs, weight = its relative weight update, inherited_cka = "
            "1 - CKA of hidden states (change passed up from below; for comparison)",
        },
    )
    tuned_variant: Optional[str] = field(
        default=None,
        metadata={
            "group": "window",
            "help": "what TUNED is, e.g. 11111 (uniform LoRA) or full; detected from the adapter when "
            "omitted. A window-tuned TUNED (a mask with a 0) gets no recommendation",
        },
    )
    min_objective: float = field(
        default=MIN_OBJECTIVE,
        metadata={
            "group": "window",
            "help": "least captured-minus-used share a window must reach, else the paper's 0.2:0.8",
        },
    )
    probe: bool = field(
        default=False,
        metadata={
            "group": "window",
            "help": "also score each layer of BASE by a few calibration backward passes (gradient "
            "probe) and record the window it picks; with one model it makes the recommendation",
        },
    )
    probe_batches: int = field(default=4, metadata={"group": "window", "help": "calibration batches of --probe"})
    tuned_kind: Optional[str] = field(default=None, init=False)
    tuned_layers: Optional[list] = field(default=None, init=False)
    detected_variant: Optional[str] = field(default=None, init=False)

    def __post_init__(self) -> None:
        for name, value in (("base", self.base), ("tuned", self.tuned), ("tokenizer", self.tokenizer)):
            if value is None and name != "base":
                continue
            if not isinstance(value, (str, os.PathLike)):
                raise ValueError(f"{name}={value!r} must be a model directory or hub id (a string).")
        for name in ("early_exit", "weight_stats", "progress", "probe"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name}={value!r} must be True or False (a bool, not {type(value).__name__}).")
        for name, low in (("num_prompts", 2), ("max_length", 2), ("batch_size", 1), ("probe_batches", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"--{name.replace('_', '-')}={value!r}: need an integer >= {low}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype={self.dtype!r} is not one of {', '.join(DTYPES)}.")
        if self.stats_dtype not in STATS_DTYPES:
            raise ValueError(f"--stats-dtype={self.stats_dtype!r} is not one of {', '.join(STATS_DTYPES)}.")
        if self.split not in ("train", "test"):
            raise ValueError(f"--split={self.split!r} is not one of train, test.")
        dev = str(self.device)
        if dev not in ("auto", "cpu", "cuda", "mps") and not (dev.startswith("cuda:") and dev[5:].isdigit()):
            raise ValueError(f"--device={dev!r}: use auto, cpu, cuda, cuda:N or mps.")
        checks.check_device(dev, "--device")
        if self.signal not in PAIR_SIGNALS:
            raise ValueError(f"--signal={self.signal!r} is not one of {', '.join(PAIR_SIGNALS)}.")
        if self.signal == "weight" and not self.weight_stats:
            raise ValueError(
                "--signal=weight needs the weight statistics; drop --no-weight-stats or use --signal own_output."
            )
        mo = self.min_objective
        if isinstance(mo, bool) or not isinstance(mo, (int, float)) or not 0 <= mo < 1:
            raise ValueError(f"--min-objective={mo!r}: need a number in [0, 1), e.g. {MIN_OBJECTIVE}.")
        if self.tuned_variant is not None and (
            not isinstance(self.tuned_variant, str) or not self.tuned_variant.strip()
        ):
            raise ValueError(f"--tuned-variant={self.tuned_variant!r}: give what TUNED is, e.g. '11111' or 'full'.")
        self.base, self.tuned = os.fspath(self.base), None if self.tuned is None else os.fspath(self.tuned)
        check_model_path(self.base, "BASE")
        if self.tokenizer:
            check_model_path(self.tokenizer, "--tokenizer")
        if self.tuned is not None:
            self.tuned_kind = detect_tuned_kind(self.tuned)
        check_prompt_source(self.prompts, self.data_dir, self.split)
        check_pair(self)
        if self.tuned is not None:
            detect_variant(self)

    @property
    def mode(self) -> str:
        """``"pair"`` with a TUNED model, else ``"single"``."""
        return "single" if self.tuned is None else "pair"

    @property
    def window_tuned(self) -> Optional[str]:
        """Why TUNED is window-tuned (trains only some layers), or None if it trains every layer."""
        if self.tuned is None:
            return None
        if self.tuned_layers is not None:
            from midblock_plugin.window import describe_window

            return (
                f"the adapter trains only layers {describe_window(0, self.tuned_layers)}; the layers outside were "
                "never trained, so a recommendation from it is circular; analyse a uniform (11111) adapter or a "
                "full fine-tune instead"
            )
        declared = (self.tuned_variant or "").strip()
        if declared and set(declared) <= {"0", "1"} and "0" in declared:
            return (
                f"--tuned-variant {declared!r} is a window-tuned model; the layers outside its window were never "
                "trained, so a recommendation from it is circular; analyse a uniform (11111) adapter or a full "
                "fine-tune instead"
            )
        return None


_LAYER_KEY = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def adapter_trained_layers(adapter: str, num_layers: int) -> list[int]:
    """The decoder layers a PEFT adapter directory trains: the layers its LoRA weights sit in
    (safetensors header), else ``layers_to_transform``, else every layer."""
    path = Path(os.path.expanduser(adapter))
    cfg = checks.read_adapter_config(adapter, "TUNED")
    found: set[int] = set()
    st = path / "adapter_model.safetensors"
    if st.is_file():
        for key in checks.safetensors_shapes(st):
            m = _LAYER_KEY.search(key)
            if m and int(m.group(1)) < num_layers:
                found.add(int(m.group(1)))
    lt = cfg.get("layers_to_transform")
    listed = {lt} if isinstance(lt, int) else set(lt) if isinstance(lt, list) else None
    if found:
        return sorted(found & listed) if listed else sorted(found)
    return sorted(listed) if listed else list(range(num_layers))


def detect_variant(config: "AnalysisConfig") -> None:
    """Set ``tuned_layers`` / ``detected_variant`` of a two-model config from TUNED's files, and
    refuse a declared ``tuned_variant`` that contradicts the adapter."""
    num_layers = architecture.num_layers_from_config(architecture.load_config(config.base))
    if config.tuned_kind != "adapter":
        config.detected_variant = "full"
        return
    from midblock_plugin.window import describe_window

    trained = adapter_trained_layers(config.tuned, num_layers)
    if trained == list(range(num_layers)):
        config.detected_variant = "11111"
    else:
        config.tuned_layers = trained
        config.detected_variant = (
            exact_segment_mask(trained, num_layers) or f"layers {describe_window(num_layers, trained)}"
        )
    declared = (config.tuned_variant or "").strip()
    if declared and set(declared) <= {"0", "1"} and declared != config.detected_variant:
        raise ValueError(
            f"--tuned-variant={declared!r} but TUNED {config.tuned!r} trains "
            + (
                "every layer (11111)"
                if config.tuned_layers is None
                else f"only layers {describe_window(num_layers, config.tuned_layers)} ({config.detected_variant})"
            )
            + "; give the variant the adapter was trained as, or leave --tuned-variant out to detect it."
        )


def check_pair(config: "AnalysisConfig") -> None:
    """BASE (and TUNED) from ``config.json`` and the adapter files alone, before any weights
    load: each is a decoder with weights; a TUNED model has BASE's architecture, depth and
    width; a TUNED adapter fits BASE (layers, modules, widths)."""
    cb = checks.check_model_dir(config.base, "BASE", weights=True)
    if config.tuned_kind == "adapter":
        checks.check_adapter(config.tuned, cb, "TUNED", base_flag="BASE")
    elif config.tuned_kind == "model":
        ct = checks.check_model_dir(config.tuned, "TUNED", weights=True)
        arch_b = (getattr(cb, "architectures", None) or [type(cb).__name__])[0]
        arch_t = (getattr(ct, "architectures", None) or [type(ct).__name__])[0]
        if type(cb) is not type(ct):
            raise ValueError(
                f"BASE is a {arch_b} ({cb.model_type}) but TUNED is a {arch_t} ({ct.model_type}); give a TUNED "
                "checkpoint fine-tuned from BASE (same architecture)."
            )
        _check_pair_configs(config, cb, ct)


def _check_pair_configs(config: AnalysisConfig, cb: Any = None, ct: Any = None) -> None:
    """Compare layer count and width of BASE and a full TUNED model before loading weights."""
    cb = cb if cb is not None else architecture.load_config(config.base)
    ct = ct if ct is not None else architecture.load_config(config.tuned)
    lb, lt = architecture.num_layers_from_config(cb), architecture.num_layers_from_config(ct)
    db = getattr(cb, "hidden_size", None) or getattr(cb, "n_embd", None)
    dt = getattr(ct, "hidden_size", None) or getattr(ct, "n_embd", None)
    if lb != lt or db != dt:
        raise ValueError(
            f"BASE has {lb} layers of width {db} but TUNED has {lt} layers of width {dt}; "
            "give a TUNED checkpoint fine-tuned from BASE (same architecture)."
        )
