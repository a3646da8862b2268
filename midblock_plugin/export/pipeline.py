"""One export, end to end: :func:`export_adapter`.

Every input is checked before any weight is loaded (the adapter directory, its base model and
whether the adapter was trained on that kind of model, the target's limits, the output directory,
the free disk space a merged model needs); then the export is written into a staging directory
beside ``--output``, checked against the original adapter on a few prompts, and
``midblock-export.json`` records what was done, the check and the command that serves the result;
only then is the staging directory renamed to ``--output`` (:func:`midblock_plugin.storage.atomic_directory`):
a failed or killed export leaves no partial files under that name.

>>> report = export_adapter("out/adapter", "tgi", "out/tgi")   # doctest: +SKIP
>>> report["passed"], report["checks"][0]["max_abs_diff"]        # doctest: +SKIP
(True, 0.0)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from midblock_plugin import storage
from midblock_plugin.checks import check_output_dir
from midblock_plugin.export import REPORT_JSON
from midblock_plugin.export.options import DEFAULT_MAX_SHARD_SIZE, DEFAULT_MERGED_DTYPE, ExportOptions
from midblock_plugin.export.source import AdapterSource, read_source
from midblock_plugin.export.targets import (
    AdapterExport,
    ExportTarget,
    check_servable,
    get_target,
    step_pad_every_layer,
)
from midblock_plugin.export.verify import DEFAULT_PROMPTS, Check, compare, logits, prompt_ids
from midblock_plugin.io import write_json


#: Tokenizer and chat-template files copied beside an exported adapter (engines may read them).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
)


def check_request(adapter: Any, target: Any, output: Any, **options: Any) -> AdapterSource:
    """Every check that needs no weights (``options``: the other fields of
    :class:`~midblock_plugin.export.options.ExportOptions`); returns the adapter source."""
    return _check(ExportOptions(adapter, target, output, **options))


def _check(opts: ExportOptions) -> AdapterSource:
    source = read_source(opts.adapter, opts.base)
    check_servable(source, opts.target)
    out = Path(os.fspath(opts.output)).expanduser()
    if out.resolve() == source.path.resolve():
        raise ValueError(f"--output {os.fspath(opts.output)!r} is the adapter directory itself; give a new directory.")
    if opts.overwrite and out.resolve() in source.path.resolve().parents:
        raise ValueError(
            f"--output {os.fspath(opts.output)!r} holds the adapter being exported; --overwrite would remove it. "
            "Give a new directory."
        )
    check_output_dir(opts.output, "--output")
    if out.is_dir() and any(p for p in out.iterdir() if not p.name.endswith(".tmp")) and not opts.overwrite:
        raise ValueError(f"--output {os.fspath(opts.output)!r} is not empty; give a new directory or add --overwrite.")
    storage.check_free_space(out, export_bytes(source, opts), f"the {opts.target} export")  # before any loading
    return source


def export_bytes(source: AdapterSource, opts: ExportOptions) -> int:
    """Bytes the export will write: a merged model (the base's parameters in ``--dtype``), or the adapter
    (padded to every layer where the target pads), with the tokenizer files and a margin."""
    spec = get_target(opts.target)
    copied = storage.files_bytes(source.path, TOKENIZER_FILES)
    if spec.merges:
        return storage.model_bytes(source.base, opts.dtype or DEFAULT_MERGED_DTYPE) + copied
    size = source.weights_file.stat().st_size
    window = source.config.get("layers_to_transform")
    window = [window] if isinstance(window, int) else window
    if step_pad_every_layer in spec.steps and window:
        size = size * source.layout.num_layers // len(window)
    return size + copied + storage.MARGIN_BYTES


def export_adapter(
    adapter: str | os.PathLike,
    target: str,
    output: str | os.PathLike,
    *,
    log: Callable[[str], None] = print,
    **options: Any,
) -> dict[str, Any]:
    """Export ``adapter`` for ``target`` (a key of :data:`~midblock_plugin.export.targets.TARGETS`)
    into ``output`` and check it; ``options`` are the other fields of
    :class:`~midblock_plugin.export.options.ExportOptions` (``base``, ``dtype``, ``max_shard_size``,
    ``tolerance``, ``device``, ``prompts``, ``overwrite``). Returns the report (also written to
    ``output/midblock-export.json``); ``report["passed"]`` is False if the export's logits disagree
    with the original adapter's."""
    opts = ExportOptions(adapter, target, output, **options)
    source = _check(opts)
    spec = get_target(opts.target)
    device = opts.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    prompts = opts.prompts or DEFAULT_PROMPTS
    out = Path(os.fspath(output)).expanduser()
    if source.base_note:
        log(source.base_note)
    report: dict[str, Any] = {
        "target": spec.name,
        "engine": spec.engine,
        "adapter": str(source.path),
        "base": source.base,
        "recorded_base": source.recorded_base,
        "output": str(out),
        "adapter_rank": source.rank,
        "adapter_alpha": source.alpha,
        "use_rslora": source.use_rslora,
        "layers_to_transform": source.config.get("layers_to_transform"),
    }
    need = export_bytes(source, opts)
    # written whole under a staging name, renamed to --output at the end (an --overwrite'n export stays until then)
    with storage.atomic_directory(out, need=need, replace=opts.overwrite) as staging:
        if spec.merges:
            checks = _merged(
                source,
                spec,
                staging,
                report,
                opts.dtype or DEFAULT_MERGED_DTYPE,
                opts.max_shard_size or DEFAULT_MAX_SHARD_SIZE,
                opts.tolerance,
                device,
                prompts,
                log,
            )
        else:
            checks = _adapter_target(source, spec, staging, report, opts.tolerance, device, prompts, log)
        report["checks"] = [c.to_dict() for c in checks]
        report["passed"] = all(c.passed for c in checks)
        report["command"] = spec.serve(str(out), source.base, report)
        report["files"] = sorted(p.name for p in staging.iterdir()) + [REPORT_JSON]
        write_json(staging / REPORT_JSON, report)
    return report


# --------------------------------------------------------------------------- the two kinds of export


def _progress(total: int, target: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"midblock export --target {target}: logits", unit="prompt", leave=False)


def _load_base(source: AdapterSource, device: str):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(source.base, dtype=torch.float32).to(device).eval()


def _adapter_target(
    source: AdapterSource,
    spec: ExportTarget,
    out: Path,
    report: dict[str, Any],
    tolerance: float,
    device: str,
    prompts: Sequence[str],
    log: Callable[[str], None],
) -> list[Check]:
    from peft import PeftModel
    from safetensors.torch import save_file

    work = AdapterExport(
        target=spec, source=source, tensors=source.load_tensors(), config=dict(source.config), report=report, log=log
    )
    for step in spec.steps:
        step(work)
    tensors = work.tensors
    config = {**work.config, "base_model_name_or_path": source.base}  # the base it was checked against
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(out / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    write_json(out / "adapter_config.json", config)
    for name in TOKENIZER_FILES:
        if (source.path / name).is_file():
            shutil.copy2(source.path / name, out / name)

    model = _load_base(source, device)
    ids, how = prompt_ids([source.path, source.base], int(model.config.get_text_config().vocab_size), prompts)
    report["prompts"] = how
    bar = _progress(3 * len(ids), spec.name)
    try:
        base_logits = logits(model, ids, device, bar)
        peft_model = PeftModel.from_pretrained(model, str(source.path), adapter_name="original").eval()
        ref = logits(peft_model, ids, device, bar)
        peft_model.load_adapter(str(out), adapter_name="export")
        peft_model.set_adapter("export")
        peft_model.eval()
        got = logits(peft_model, ids, device, bar)
    finally:
        bar.close()
    check = compare(
        f"{spec.name} export through PEFT vs the original adapter ({how})", got, ref, tolerance, base_logits
    )
    log(check.line())
    _warn_inert(check, log)
    return [check]


def _merged(
    source: AdapterSource,
    spec: ExportTarget,
    out: Path,
    report: dict[str, Any],
    dtype: str,
    max_shard_size: str,
    tolerance: float,
    device: str,
    prompts: Sequence[str],
    log: Callable[[str], None],
) -> list[Check]:
    from peft import PeftModel

    from midblock_plugin.export.merge import save_merged

    model = _load_base(source, device)
    ids, how = prompt_ids([source.path, source.base], int(model.config.get_text_config().vocab_size), prompts)
    report["prompts"] = how
    bar = _progress(4 * len(ids), spec.name)
    try:
        base_logits = logits(model, ids, device, bar)
        peft_model = PeftModel.from_pretrained(model, str(source.path)).eval()
        ref = logits(peft_model, ids, device, bar)
        effect = compare("adapter effect", ref, base_logits, tolerance)
        checks, info = save_merged(
            peft_model,
            ids,
            ref,
            out,
            dtype=dtype,
            max_shard_size=max_shard_size,
            tolerance=tolerance,
            device=device,
            tokenizer_sources=[source.path, source.base],
            progress=bar,
            log=_above(bar, log),
        )
    finally:
        bar.close()
    for c in checks:
        c.adapter_effect = effect.max_abs_diff
    report[spec.name] = info  # the merge's own section, under the target's name (as the vLLM advice is)
    _warn_inert(checks[0], log)
    return checks


def _above(bar: Any, log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` that writes above the progress bar instead of through it."""

    def write(line: str) -> None:
        with bar.external_write_mode():
            log(line)

    return write


def _warn_inert(check: Check, log: Callable[[str], None]) -> None:
    if check.adapter_effect is not None and check.adapter_effect == 0.0:
        log(
            "warning: the original adapter does not change the logits at all (lora_B is zero: an untrained adapter?), "
            "so this check cannot tell a correct export from a broken one."
        )
