"""``EvalSettings``: what to evaluate with lm-eval, and how, at the end of training.

Validated on construction, before any model is loaded; importing this module is cheap
(no torch, no lm-eval). Task names are checked against lm-eval's task index separately
(:func:`midblock_plugin.evaluation.tasks.plan_tasks`), because building that index takes
seconds. The closed choices (protocol, backend, partitioned mode) are the ``Literal`` types of
:mod:`midblock_plugin.choices`; the value rules shared with other options live in :mod:`midblock_plugin.rules`.

>>> s = EvalSettings(limit=50, num_fewshot=5, baseline=True)
>>> s.tasks
['gsm8k']
>>> EvalSettings(limit=0)
Traceback (most recent call last):
...
midblock_plugin.rules.OptionError: limit=0 must be a positive integer (number of test rows per task) or a fraction in (0, 1); leave limit unset (None) for the whole test split.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from midblock_plugin import rules
from midblock_plugin.choices import Backend, PartitionedMode, Protocol, values
from midblock_plugin.data import gsm8k
from midblock_plugin.io import EVAL_SUBDIR
from midblock_plugin.rules import OptionError


_BATCH_RE = re.compile(r"^auto(:\d+(\.\d+)?)?$")

#: The evaluation protocols: lm-eval's task defaults, the paper's (see :data:`PAPER_PROTOCOL`), or the
#: authors' own scoring (:data:`AUTHORS_PROTOCOL`, :mod:`midblock_plugin.evaluation.authors`).
PROTOCOLS = values(Protocol)
#: The paper's GSM8K protocol as lm-eval settings: zero-shot, greedy, 64 new tokens, scored on
#: the last number of the answer (lm-eval's ``flexible-extract`` filter).
PAPER_PROTOCOL = {
    "tasks": ["gsm8k"],
    "num_fewshot": 0,
    "max_gen_toks": 64,
    "do_sample": False,
    "filter": "flexible-extract",
}
#: The authors' scripts: 100 test questions shuffled with seed 42, greedy, 64 new tokens, no stop
#: sequence, the last number compared as a float (no lm-eval; :mod:`midblock_plugin.evaluation.authors`).
AUTHORS_PROTOCOL = {
    "tasks": ["gsm8k"],
    "num_fewshot": 0,
    "max_gen_toks": 64,
    "do_sample": False,
    "filter": "last-number",
}
#: The filter whose ``exact_match`` is each protocol's headline number.
HEADLINE_FILTER = {"lm-eval": "strict-match", "paper": "flexible-extract", "authors": "last-number"}
#: Where the evaluation runs: on the model in memory, or after the save in its own process.
BACKENDS = values(Backend)
#: How ZeRO-3 / FSDP ranks share an evaluation (see :mod:`midblock_plugin.evaluation.distributed`).
PARTITIONED_MODES = values(PartitionedMode)


def limit_text(text: str) -> int | float:
    """The command line's ``--limit``: rows per task (an int) or a fraction (a float)."""
    try:
        value = float(text)
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(
            f"--limit {text!r} is not a number; give rows per task (e.g. 100) or a fraction (e.g. 0.1)"
        ) from None
    return int(value) if value.is_integer() else value


def batch_text(text: str) -> int | str:
    """The command line's ``--batch-size``: an int, or lm-eval's ``auto`` / ``auto:N``."""
    return int(text) if text.isdigit() else text


@dataclass
class EvalSettings:
    """Evaluation with lm-eval's own tasks (GSM8K by default) on the model in memory.

    Used by :class:`~midblock_plugin.evaluation.callback.EvalCallback` at the end of
    training (and optionally at its start, as a baseline), by
    :func:`~midblock_plugin.evaluation.runner.evaluate_model` and by ``midblock eval``.

    Fields:
        enabled: run the evaluation at all.
        tasks: lm-eval task names (a list or a comma-separated string).
        num_fewshot: few-shot examples per prompt; ``None`` keeps the task's default (5 for gsm8k).
        limit: test rows per task (int >= 1, or a fraction in (0, 1)); ``None`` = the whole split.
        batch_size: generation batch size, an int or lm-eval's ``"auto"`` / ``"auto:N"``.
        max_gen_toks: cap on generated tokens; ``None`` keeps lm-eval's default (256).
        max_length: context length for lm-eval (prompts are left-truncated to it); ``None`` = from the model config.
        apply_chat_template: wrap prompts in the tokenizer's chat template (``True``) or a named template.
        fewshot_as_multiturn: with a chat template, give few-shot examples as turns;
            ``None`` follows ``apply_chat_template`` (lm-eval's CLI default).
        system_instruction: optional system prompt.
        baseline: also evaluate the untrained model at train start; the final report shows the change.
        data_dir: a local GSM8K directory (``train.jsonl``/``test.jsonl``); ``None`` = ``$MIDBLOCK_GSM8K_DIR``
            if set, else the hub; ``"hub"`` forces the hub.
        output_subdir: results go to ``<output_dir>/<output_subdir>/<task>.json``.
        save_samples: also write every scored sample (prompt, generation, filtered answers) as JSON Lines.
        bootstrap_iters: lm-eval's bootstrap iterations for stderrs of non-mean metrics (exact_match's
            stderr is analytic); 0 skips stderrs.
        protocol: ``"lm-eval"`` (the task's own defaults: 5-shot, 256 new tokens for gsm8k) or
            ``"paper"`` (the paper's: zero-shot, greedy, 64 new tokens, the last number of the answer
            = lm-eval's gsm8k with ``num_fewshot=0``, ``max_gen_toks=64``, ``flexible-extract``).
            Under ``"paper"`` leave ``num_fewshot`` / ``max_gen_toks`` unset (or set them to 0 / 64):
            other values contradict the protocol and are refused.
        backend: ``"in-memory"`` (the trained model as it is, every rank taking part), ``"hf"`` or
            ``"vllm"`` (after the save, in its own process started by rank 0: ``midblock eval
            --backend ...``).
        tensor_parallel_size / data_parallel_size: vLLM's, passed through (``backend="vllm"``).
        vllm_args: more vLLM ``model_args`` passed through, ``"k=v,k=v"`` (e.g. ``"gpu_memory_utilization=0.8"``).
        processes: ``backend="hf"`` after the save: data-parallel processes (``torchrun``; ``accelerate launch`` works too on GPUs).
        partitioned_mode: under ZeRO-3 / FSDP, ``"sharded"`` (each rank generates for its share of the
            questions, in step with the others) or ``"lockstep"`` (every rank generates every answer).

    >>> EvalSettings(tasks="gsm8k,gsm8k_cot", limit=0.1).tasks
    ['gsm8k', 'gsm8k_cot']
    """

    enabled: bool = field(default=True, metadata={"help": "Run the lm-eval evaluation at the end of training."})
    tasks: list[str] | str = field(
        default_factory=lambda: ["gsm8k"],
        metadata={
            "help": "lm-eval task names, a list or 'a,b' (default: gsm8k). Any task lm-eval knows is accepted.",
            "metavar": "TASKS",
        },
    )
    num_fewshot: Optional[int] = field(
        default=None,
        metadata={
            "help": "Few-shot examples per prompt; None keeps the task's own default (5 for gsm8k).",
            "metavar": "K",
        },
    )
    limit: int | float | None = field(
        default=None,
        metadata={
            "help": "Test rows scored per task (int >= 1, or a fraction in (0, 1)); None = the whole test split (1,319 for gsm8k).",
            "parse": limit_text,
            "metavar": "N",
        },
    )
    batch_size: int | str = field(
        default=8,
        metadata={
            "help": "Generation batch size: an int, or 'auto' / 'auto:N' (lm-eval finds the largest that fits).",
            "parse": batch_text,
        },
    )
    max_gen_toks: Optional[int] = field(
        default=None,
        metadata={"help": "Maximum generated tokens per answer; None keeps lm-eval's default (256).", "metavar": "N"},
    )
    max_length: Optional[int] = field(
        default=None,
        metadata={
            "help": "Context length for lm-eval (longer prompts are left-truncated); None = from the model config.",
            "metavar": "N",
        },
    )
    apply_chat_template: bool | str = field(
        default=False,
        metadata={"help": "Wrap prompts in the tokenizer's chat template (True) or the named template (a string)."},
    )
    fewshot_as_multiturn: Optional[bool] = field(
        default=None,
        metadata={
            "help": "With a chat template, give few-shot examples as a multi-turn chat; None follows apply_chat_template."
        },
    )
    system_instruction: Optional[str] = field(
        default=None, metadata={"help": "Optional system instruction prepended to every prompt."}
    )
    baseline: bool = field(
        default=False,
        metadata={"help": "Also evaluate the untrained model at train start; the final report shows the change."},
    )
    data_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "Local GSM8K directory with train.jsonl / test.jsonl (offline). None: $MIDBLOCK_GSM8K_DIR if set, else the hub; 'hub' forces openai/gsm8k from the hub.",
            "metavar": "DIR",
        },
    )
    output_subdir: str = field(
        default=EVAL_SUBDIR,
        metadata={"help": "Results are written to <output_dir>/<output_subdir>/<task>.json (main process only)."},
    )
    save_samples: bool = field(
        default=False,
        metadata={
            "help": "Also write every scored sample (prompt, generation, filtered answers) to <task>.samples.jsonl."
        },
    )
    bootstrap_iters: int = field(
        default=100000,
        metadata={
            "help": "lm-eval bootstrap iterations for stderrs of non-mean metrics (exact_match's stderr is analytic); 0 skips stderrs."
        },
    )
    protocol: Protocol = field(
        default="lm-eval",
        metadata={
            "help": "Evaluation protocol: 'lm-eval' (the task's defaults: 5-shot gsm8k, 256 new tokens) or 'paper' (zero-shot, greedy, 64 new tokens, last number = flexible-extract) or 'authors' (the authors' scripts: 100 questions shuffled with seed 42, no stop sequence, last number as a float; HF generate, no lm-eval)."
        },
    )
    backend: Backend = field(
        default="in-memory",
        metadata={
            "help": "Where the evaluation runs: 'in-memory' (the trained model, every rank), 'hf' or 'vllm' (the saved model, in its own process started by rank 0 after the save)."
        },
    )
    tensor_parallel_size: int = field(
        default=1, metadata={"help": "backend vllm: vLLM tensor_parallel_size (GPUs per model copy).", "metavar": "N"}
    )
    data_parallel_size: int = field(
        default=1,
        metadata={"help": "backend vllm: vLLM data_parallel_size (model copies); needs Ray when > 1.", "metavar": "N"},
    )
    vllm_args: Optional[str] = field(
        default=None,
        metadata={
            "help": "backend vllm: more vLLM model_args passed through, 'k=v,k=v' (e.g. 'gpu_memory_utilization=0.8,max_model_len=2048').",
            "metavar": "K=V,...",
        },
    )
    processes: int = field(
        default=1,
        metadata={"help": "backend hf after the save: data-parallel processes (runs under torchrun when > 1)."},
    )
    partitioned_mode: PartitionedMode = field(
        default="sharded",
        metadata={
            "help": "Under ZeRO-3 / FSDP: 'sharded' (ranks split the questions, in step) or 'lockstep' (every rank answers every question)."
        },
    )

    def __post_init__(self) -> None:
        for name in ("enabled", "baseline", "save_samples"):
            rules.check_bool(getattr(self, name), name)
        tasks = self.tasks
        if isinstance(tasks, str):
            tasks = [t.strip() for t in tasks.split(",")]
        if not isinstance(tasks, (list, tuple)) or not all(isinstance(t, str) for t in tasks):
            raise OptionError(
                "tasks", self.tasks, "must be a list of lm-eval task names or a comma-separated string, e.g. 'gsm8k'"
            )
        tasks = [t.strip() for t in tasks if t.strip()]
        if not tasks:
            raise OptionError("tasks", self.tasks, "names no task; name at least one lm-eval task, e.g. 'gsm8k'")
        if len(set(tasks)) != len(tasks):
            raise OptionError("tasks", tasks, "names a task twice; list each task once")
        self.tasks = list(tasks)

        unset = {"self": "num_fewshot"}
        if self.num_fewshot is not None and (_not_int(self.num_fewshot) or self.num_fewshot < 0):
            raise OptionError(
                "num_fewshot",
                self.num_fewshot,
                "must be an integer >= 0, or leave {self} unset (None) for the task's default (5 for gsm8k)",
                refs=unset,
            )
        if self.limit is not None:
            ok = (not _not_int(self.limit) and self.limit >= 1) or (
                isinstance(self.limit, float) and 0.0 < self.limit < 1.0
            )
            if isinstance(self.limit, float) and self.limit >= 1 and self.limit.is_integer():
                self.limit, ok = int(self.limit), True
            if not ok:
                raise OptionError(
                    "limit",
                    self.limit,
                    "must be a positive integer (number of test rows per task) or a "
                    "fraction in (0, 1); leave {self} unset (None) for the whole test split",
                    refs={"self": "limit"},
                )
        bs = self.batch_size
        if isinstance(bs, str) and bs.strip().isdigit():
            bs = self.batch_size = int(bs)
        if (isinstance(bs, str) and not _BATCH_RE.match(bs)) or (not isinstance(bs, str) and (_not_int(bs) or bs < 1)):
            raise OptionError("batch_size", bs, "must be a positive integer, 'auto' or 'auto:N'")
        for name in ("max_gen_toks", "max_length"):
            value = getattr(self, name)
            if value is not None and (_not_int(value) or value < 1):
                raise OptionError(
                    name,
                    value,
                    "must be a positive integer, or leave {self} unset (None) for lm-eval's default",
                    refs={"self": name},
                )
        if not isinstance(self.apply_chat_template, (bool, str)) or self.apply_chat_template == "":
            raise OptionError(
                "apply_chat_template", self.apply_chat_template, "must be true/false or the name of a chat template"
            )
        if self.fewshot_as_multiturn is not None and not isinstance(self.fewshot_as_multiturn, bool):
            raise OptionError("fewshot_as_multiturn", self.fewshot_as_multiturn, "must be true, false or unset (None)")
        if self.fewshot_as_multiturn and not self.apply_chat_template:
            raise OptionError(
                "fewshot_as_multiturn",
                True,
                "needs a chat template: also set {chat} "
                "(few-shot examples can only be chat turns inside a chat template)",
                refs={"chat": ("apply_chat_template", True)},
            )
        if self.system_instruction is not None and not isinstance(self.system_instruction, str):
            raise OptionError(
                "system_instruction", self.system_instruction, "must be a string, or unset (None) for no system prompt"
            )
        if self.data_dir is not None:
            if not isinstance(self.data_dir, (str, os.PathLike)) or not os.fspath(self.data_dir).strip():
                raise OptionError(
                    "data_dir",
                    self.data_dir,
                    "must be a directory holding train.jsonl and test.jsonl, "
                    f"'{gsm8k.HUB}' for the hub, or unset (None) for ${gsm8k.ENV} / the hub",
                )
            self.data_dir = os.fspath(self.data_dir)
            if self.data_dir != gsm8k.HUB:
                from midblock_plugin.checks import check_gsm8k_dir

                try:
                    path = check_gsm8k_dir(self.data_dir)  # every line of both splits, before any model is loaded
                except (FileNotFoundError, ValueError) as exc:
                    raise rules.as_option_error("data_dir", self.data_dir, exc) from None
                self._located = ((self.data_dir, os.environ.get(gsm8k.ENV)), path)  # checked once: resolved_data_dir
        sub = self.output_subdir
        if not isinstance(sub, str) or not sub.strip() or Path(sub).is_absolute() or ".." in Path(sub).parts:
            raise OptionError("output_subdir", sub, "must be a non-empty relative path inside output_dir, e.g. 'eval'")
        if _not_int(self.bootstrap_iters) or self.bootstrap_iters < 0:
            raise OptionError("bootstrap_iters", self.bootstrap_iters, "must be an integer >= 0 (0 skips stderrs)")
        self._check_protocol()
        self._check_backend()

    def _check_protocol(self) -> None:
        rules.check_choice(
            "protocol",
            self.protocol,
            Protocol,
            extra=(
                " ('lm-eval': the task's defaults, 5-shot gsm8k; 'paper': zero-shot, greedy, 64 new tokens, last number; "
                "'authors': the authors' scripts, 100 questions shuffled with seed 42, last number as a float)"
            ),
        )
        if self.protocol not in ("paper", "authors"):
            return
        p = self.protocol
        fixed = PAPER_PROTOCOL if p == "paper" else AUTHORS_PROTOCOL
        refs = {"p": ("protocol", p), "lm": ("protocol", "lm-eval"), "tasks": "tasks"}
        if self.tasks != fixed["tasks"]:
            raise OptionError(
                "tasks",
                self.tasks,
                "contradicts {p}, the paper's GSM8K protocol, which evaluates gsm8k only. "
                "Drop {tasks}, or use {lm} for other tasks",
                refs=refs,
            )
        for name in ("num_fewshot", "max_gen_toks"):
            value = getattr(self, name)
            if value is not None and value != fixed[name]:
                raise OptionError(
                    name,
                    value,
                    "contradicts {p}, which fixes {fixed} (zero-shot, 64 new tokens). "
                    "Leave {self} unset under {p}, or use {lm} to choose it",
                    refs={**refs, "fixed": (name, fixed[name]), "self": name},
                )
        if self.fewshot_as_multiturn:
            raise OptionError(
                "fewshot_as_multiturn", True, "has no examples to give: {p} is zero-shot; leave it unset", refs=refs
            )
        if p == "authors":
            self._check_authors()

    def _check_authors(self) -> None:
        """What the authors' scoring (Hugging Face ``generate``, no lm-eval) cannot honour."""
        why = "{p} scores as the authors' scripts do (plain 'Question: ...\\nAnswer:' prompt, HF generate)"
        refs = {"p": ("protocol", "authors"), "paper": ("protocol", "paper"), "hf": ("backend", "hf")}
        if isinstance(self.limit, float):
            raise OptionError(
                "limit",
                self.limit,
                f": {why} on the first N questions of the seed-42 order; give an integer "
                "N (or leave {self} unset for their 100)",
                refs={**refs, "self": "limit"},
            )
        for name in ("apply_chat_template", "system_instruction", "max_length"):
            if getattr(self, name) not in (None, False):
                raise OptionError(
                    name,
                    getattr(self, name),
                    f"does not apply: {why}. Leave {{self}} unset, or use {{paper}}",
                    refs={**refs, "self": name},
                )
        if self.backend == "vllm":
            raise OptionError(
                "backend", "vllm", f"does not apply: {why}. Use {{hf}} (after the save) or 'in-memory'", refs=refs
            )
        if self.processes != 1:
            raise OptionError(
                "processes",
                self.processes,
                f": {why} in one process (every rank would answer the same 100 questions); leave {{self}} at 1",
                refs={**refs, "self": "processes"},
            )

    def _check_backend(self) -> None:
        rules.check_choice(
            "backend",
            self.backend,
            Backend,
            extra=(
                " ('in-memory': the trained model in every rank; 'hf' / 'vllm': the saved model, in its own process)"
            ),
        )
        for name in ("tensor_parallel_size", "data_parallel_size", "processes"):
            value = getattr(self, name)
            if _not_int(value) or value < 1:
                raise OptionError(name, value, "must be a positive integer (1 = no parallelism)")
        refs = {
            "vllm": ("backend", "vllm"),
            "hf": ("backend", "hf"),
            "got": ("backend", self.backend),
            "dp": "data_parallel_size",
        }
        if self.backend != "vllm":
            for name in ("tensor_parallel_size", "data_parallel_size"):
                if getattr(self, name) != 1:
                    raise OptionError(
                        name, getattr(self, name), "is a vLLM option; it needs {vllm} (got {got})", refs=refs
                    )
            if self.vllm_args:
                raise OptionError(
                    "vllm_args", self.vllm_args, "is a vLLM option; it needs {vllm} (got {got})", refs=refs
                )
        if self.processes != 1 and self.backend != "hf":
            raise OptionError(
                "processes",
                self.processes,
                "starts data-parallel evaluation processes after the save; it needs {hf} (got {got}; vLLM has {dp})",
                refs=refs,
            )
        if self.vllm_args is not None:
            if not isinstance(self.vllm_args, str):
                raise OptionError("vllm_args", self.vllm_args, "must be a string 'k=v,k=v'")
            parse_model_args(self.vllm_args, "vllm_args")
        rules.check_choice(
            "partitioned_mode",
            self.partitioned_mode,
            PartitionedMode,
            extra=(
                " ('sharded': ZeRO-3 / FSDP ranks split the questions; 'lockstep': every rank answers every question)"
            ),
        )

    # ------------------------------------------------------------------ helpers
    @property
    def effective_num_fewshot(self) -> int | None:
        """The ``num_fewshot`` passed to lm-eval (0 under ``protocol="paper"`` / ``"authors"``; ``None`` = the task's default)."""
        return PAPER_PROTOCOL["num_fewshot"] if self.protocol in ("paper", "authors") else self.num_fewshot

    @property
    def gen_kwargs(self) -> dict[str, Any] | None:
        """The ``gen_kwargs`` passed to lm-eval (merged into the task's own generation settings)."""
        if self.protocol in ("paper", "authors"):
            return {"max_gen_toks": PAPER_PROTOCOL["max_gen_toks"], "do_sample": PAPER_PROTOCOL["do_sample"]}
        return {"max_gen_toks": self.max_gen_toks} if self.max_gen_toks else None

    @property
    def headline_filter(self) -> str:
        """The filter whose ``exact_match`` is the protocol's headline number."""
        return HEADLINE_FILTER[self.protocol]

    def protocol_info(self) -> dict[str, Any]:
        """What the protocol fixed, for reports: ``{"name", "num_fewshot", "max_gen_toks", "headline_filter", ...}``."""
        return {
            "name": self.protocol,
            "num_fewshot": self.effective_num_fewshot,
            "max_gen_toks": (self.gen_kwargs or {}).get("max_gen_toks"),
            "greedy": True,
            "headline_filter": self.headline_filter,
            "description": (
                "the paper's: zero-shot, greedy, 64 new tokens, last number in the answer (lm-eval gsm8k, flexible-extract)"
                if self.protocol == "paper"
                else "the authors' scripts: 100 test questions shuffled with seed 42, zero-shot, greedy, 64 new tokens, "
                "no stop sequence, last number compared as a float (HF generate, no lm-eval)"
                if self.protocol == "authors"
                else self._lm_eval_description()
            ),
        }

    def _lm_eval_description(self) -> str:
        """The lm-eval protocol as it runs: the task's defaults, with the overrides actually given."""
        given = []
        if self.num_fewshot is not None:
            given.append(f"{self.num_fewshot}-shot")
        if self.max_gen_toks:
            given.append(f"up to {self.max_gen_toks} new tokens")
        if not given:
            return "lm-eval's task defaults (gsm8k: 5-shot, greedy, up to 256 new tokens)"
        return f"lm-eval's task, greedy, {', '.join(given)} (given); the rest the task's defaults"

    @property
    def multiturn(self) -> bool:
        """The ``fewshot_as_multiturn`` value passed to lm-eval (resolves ``None``)."""
        if self.fewshot_as_multiturn is None:
            return bool(self.apply_chat_template)
        return self.fewshot_as_multiturn

    def resolved_data_dir(self) -> Path | None:
        """The local GSM8K directory to use, or ``None`` for lm-eval's hub dataset
        (``data_dir``, else ``$MIDBLOCK_GSM8K_DIR``, else the hub: :func:`gsm8k.locate`), checked
        once per settings object (and per value of the variable)."""
        key = (self.data_dir, os.environ.get(gsm8k.ENV))
        located = getattr(self, "_located", None)
        if located is None or located[0] != key:
            located = self._located = (key, gsm8k.locate(self.data_dir))
        return located[1]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "EvalSettings":
        """Build from a mapping (e.g. YAML keys), refusing unknown keys with the allowed list."""
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown evaluation option(s) {unknown}; allowed: {sorted(names)}.")
        return cls(**values)


def parse_model_args(text: str, name: str = "vllm_args") -> dict[str, str]:
    """``"k=v,k=v"`` -> ``{"k": "v"}``; a ``ValueError`` naming ``name`` for a malformed entry."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise OptionError(
                name, text, f": {part!r} is not key=value; give 'k=v,k=v', e.g. 'gpu_memory_utilization=0.8'"
            )
        out[key.strip()] = value.strip()
    return out


def _not_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)
