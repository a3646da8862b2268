"""The options of one export: :class:`ExportOptions`.

``midblock export``'s flags are generated from these fields (their help, defaults and choices:
:func:`midblock_plugin.cli.fields.add_dataclass_arguments`), and
:func:`~midblock_plugin.export.pipeline.export_adapter` takes the same names as keywords, so a
default or a choice list is written once, here. The ``--target`` choices and help are not a
``Literal``: they are the keys and summaries of :data:`~midblock_plugin.export.targets.TARGETS`,
read when the parser is built (``metadata["choices"]`` / ``metadata["help"]`` are functions). The
value checks that need no file run when an :class:`ExportOptions` is made; the adapter and its
base are checked by :func:`~midblock_plugin.export.pipeline.check_request`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from midblock_plugin.checks import check_device
from midblock_plugin.export import DEFAULT_TOLERANCE, DTYPES, MergedDtype
from midblock_plugin.export.targets import get_target, merging_targets, target_help, target_names


#: dtype of a merged model when ``--dtype`` is not given.
DEFAULT_MERGED_DTYPE = DTYPES[0]
#: Largest safetensors shard of a merged model when ``--max-shard-size`` is not given.
DEFAULT_MAX_SHARD_SIZE = "5GB"


@dataclass(frozen=True)
class ExportOptions:
    """One export: which adapter, for which target, where, and how it is checked."""

    adapter: str | os.PathLike = field(
        metadata={
            "positional": True,
            "metavar": "ADAPTER_DIR",
            "help": "a PEFT LoRA adapter directory (adapter_config.json + weights)",
        }
    )
    target: str = field(metadata={"choices": target_names, "help": target_help})
    output: str | os.PathLike = field(metadata={"metavar": "DIR", "help": "a new (or empty) directory for the export"})
    base: str | None = field(
        default=None,
        metadata={"help": "the base model directory or hub id (default: the adapter's base_model_name_or_path)"},
    )
    dtype: Optional[MergedDtype] = field(
        default=None,
        metadata={"default": DEFAULT_MERGED_DTYPE, "help": "merging targets only: dtype of the saved model"},
    )
    max_shard_size: str | None = field(
        default=None,
        metadata={"default": DEFAULT_MAX_SHARD_SIZE, "help": "merging targets only: largest safetensors shard"},
    )
    tolerance: float = field(
        default=DEFAULT_TOLERANCE,
        metadata={"help": "self-check bound: max |logit difference| <= tolerance * max(1, max |logit|)"},
    )
    device: str = field(default="cpu", metadata={"help": "device of the self-check: cpu, cuda, cuda:N or auto"})
    prompts: tuple[str, ...] | None = field(
        default=None,
        metadata={
            "flag": "--prompt",
            "repeatable": True,
            "metavar": "TEXT",
            "help": "a prompt of the self-check (repeatable; default: three built-in prompts)",
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "replace the contents of a non-empty --output"})

    def __post_init__(self) -> None:
        spec = get_target(self.target)
        merging = " / ".join(f"--target {n}" for n in merging_targets()) or "a merging target"
        for name, value in (("dtype", self.dtype), ("max_shard_size", self.max_shard_size)):
            if value is not None and not spec.merges:
                flag = "--" + name.replace("_", "-")
                raise ValueError(
                    f"{flag} applies to {merging} only (an adapter keeps its own dtype and file); drop "
                    f"{flag} {value} or use {merging}."
                )
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r} is not allowed; choose one of {', '.join(DTYPES)}.")
        tol = self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
            raise ValueError(f"--tolerance {tol!r} must be a positive number, e.g. 1e-5.")
        if self.max_shard_size is not None and (
            not isinstance(self.max_shard_size, str) or not self.max_shard_size.strip()
        ):
            raise ValueError(f"--max-shard-size {self.max_shard_size!r}: give a size such as 5GB or 500MB.")
        if self.prompts is not None and (
            isinstance(self.prompts, str)
            or not self.prompts
            or not all(isinstance(p, str) and p.strip() for p in self.prompts)
        ):
            raise ValueError(f"--prompt {self.prompts!r}: give one or more non-empty texts.")
        check_device(self.device)

    def keywords(self) -> dict[str, Any]:
        """The options as keywords of :func:`~midblock_plugin.export.pipeline.export_adapter`."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}
