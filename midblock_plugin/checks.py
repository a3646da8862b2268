"""Checks that need only arguments, files or ``config.json``: run before any weights load.

Pure functions, no command line: each returns quietly or raises an error whose message
names the option (``flag``: how the caller spells it, e.g. ``"--adapter"`` or ``"BASE"``),
the bad value and the fix. ``FileNotFoundError`` for a path that is not there,
``ValueError`` for a value or a file that is wrong, :class:`MissingDependency` (an
``ImportError``) for an optional package that is not installed.

* :func:`check_model_dir`: a model directory (or hub id) is a decoder-only causal LM that
  transformers and midblock can handle: ``config.json`` exists, parses, names a known
  ``model_type``, is not an encoder or encoder-decoder, has a layer count, and (optionally)
  weights lie beside it, and the package its ``quantization_config`` needs
  (:func:`check_quantization_dependency`: bitsandbytes) is installed. Returns the transformers config.
* :func:`check_adapter`: a PEFT adapter directory fits a base model (layers, module names,
  widths), from ``adapter_config.json`` and the safetensors header only.
* :func:`check_device`, :func:`check_output_dir`, :func:`check_output_file`,
  :func:`check_dependency` (re-exported from :mod:`midblock_plugin.rules`, the one home of the
  install hints), :func:`check_gsm8k_dir` (every line of both splits parsed).

>>> check_output_dir("runs/new-run", "--output-dir")   # creates nothing
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

from midblock_plugin.rules import INSTALL_HINTS, MissingDependency, check_dependency  # noqa: F401  (their one home)


#: Files that hold a model's weights (one of them must be present in a local model directory).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


# --------------------------------------------------------------------------- small helpers


def _show(value: Any) -> str:
    return repr(os.fspath(value)) if isinstance(value, (str, os.PathLike)) else repr(value)


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` is meant as a local path rather than a hub id (``org/name``)."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or (os.sep != "/" and os.sep in spec)


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in ``path``; errors name ``what`` and the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: {str(path)!r} does not exist.") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{what}: {path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})."
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{what}: {path} is not UTF-8 text (is it a binary file?).") from None
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {path} ({exc.strerror or exc}).") from None
    if not isinstance(data, dict):
        raise ValueError(f'{what}: {path} holds a JSON {type(data).__name__}, not an object ({{"key": value, ...}}).')
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- devices


def check_device(device: str | None, flag: str = "--device") -> None:
    """``device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ...; ``None`` / ``auto`` = pick)
    names a device that exists on this machine."""
    if device is None or device == "auto":
        return
    if not isinstance(device, str) or not device.strip():
        raise ValueError(f"{flag} {_show(device)} is not a device; use cpu, cuda, cuda:N or mps (or auto).")
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{flag} {device!r} is not a device; use cpu, cuda, cuda:N or mps (or auto).") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA device is visible"
            raise ValueError(f"{flag} {device!r}: CUDA is not available on this machine ({build}); use --device cpu.")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{flag} {device!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}.")
        return
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{flag} {device!r}: MPS (Apple GPU) is not available here; use --device cpu.")
        return
    backend = getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if not (callable(available) and available()):
        raise ValueError(f"{flag} {device!r}: no {dev.type} device is available here; use cpu or cuda.")


# --------------------------------------------------------------------------- output paths


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _check_creatable(path: Path, flag: str, shown: str) -> None:
    anchor = _nearest_existing(path)
    if not anchor.is_dir():
        raise ValueError(f"{flag} {shown} cannot be created: {anchor} is a file, not a directory.")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {shown} cannot be created: {anchor} is not writable.")


def check_output_dir(path: str | os.PathLike | None, flag: str = "--output-dir") -> None:
    """``path`` is a writable directory or can be created as one (nothing is created)."""
    if path is None or not str(path).strip():
        raise ValueError(f"{flag} {_show(path)}: give a directory path.")
    p = Path(path).expanduser()
    shown = repr(str(path))
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"{flag} {shown} is an existing file, not a directory; give a directory path.")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {shown} is not writable.")
        return
    _check_creatable(p, flag, shown)


def check_output_file(path: str | os.PathLike | None, flag: str = "--output") -> None:
    """``path`` can be written as a file (its directory exists writable or can be created)."""
    if path is None or not str(path).strip():
        raise ValueError(f"{flag} {_show(path)}: give a file path, e.g. results.json.")
    p = Path(path).expanduser()
    shown = repr(str(path))
    if p.is_dir():
        raise ValueError(f"{flag} {shown} is a directory; give a file path, e.g. {p / 'results.json'}.")
    if p.exists():
        if not os.access(p, os.W_OK):
            raise ValueError(f"{flag} {shown} is not writable.")
        return
    _check_creatable(p.parent, flag, shown)


# --------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=16)
def _parse_gsm8k(path: str, signature: tuple) -> None:
    from midblock_plugin.data import gsm8k

    for split in gsm8k.SPLITS:
        gsm8k.read_rows(split, data_dir=path)


def check_gsm8k_dir(data_dir: str | os.PathLike, option: str = "data_dir") -> Path:
    """A GSM8K directory (``train.jsonl`` and ``test.jsonl``) whose every line parses as a row
    with ``question`` and ``answer``; an error names the file and the line. Returns it resolved."""
    from midblock_plugin.data import gsm8k

    path = gsm8k.check_dir(data_dir, option)
    files = [path / f"{split}.jsonl" for split in gsm8k.SPLITS]
    signature = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    try:
        _parse_gsm8k(str(path), signature)
    except ValueError as exc:
        raise ValueError(str(exc).replace("data_dir:", f"{option}:", 1)) from None
    return path


# --------------------------------------------------------------------------- models


def check_model_dir(
    spec: str | os.PathLike, flag: str = "MODEL", *, weights: bool = False, trust_remote_code: bool = False
) -> Any:
    """The transformers config of ``spec`` (a model directory or hub id), after checking it
    is a decoder-only causal LM midblock can handle. With ``weights``, a local directory
    must also hold weight files. Reads ``config.json`` only."""
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        raise ValueError(f"{flag} {_show(spec)}: give a model directory (written by save_pretrained) or a hub id.")
    text = os.fspath(spec)
    path = Path(text).expanduser()
    shown = f"{flag} {text!r}"
    raw: dict | None = None
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            hint = (
                " It holds adapter_config.json: it is a PEFT adapter; give its base model here"
                if (path / "adapter_config.json").is_file()
                else ""
            )
            raise FileNotFoundError(
                f"{shown} has no config.json; give a model directory written by save_pretrained "
                f"(config.json + weights).{hint}"
            )
        raw = read_json_object(cfg_file, shown)
        _check_raw_config(raw, cfg_file, shown, trust_remote_code)
    elif path.exists():
        raise FileNotFoundError(f"{shown} is a file, not a model directory; give the directory save_pretrained wrote.")
    elif looks_like_path(text):
        raise FileNotFoundError(
            f"{shown}: no such directory; give a model directory written by save_pretrained, or a hub id."
        )

    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(text, trust_remote_code=trust_remote_code)
    except OSError as exc:
        if raw is not None:
            raise ValueError(f"{shown}: transformers cannot read its config.json ({_first_line(exc)}).") from None
        raise FileNotFoundError(
            f"{shown}: no such directory, and not a hub model available here ({_first_line(exc)}). Give a local "
            "directory written by save_pretrained, or a hub id (offline: one already in the Hugging Face cache)."
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{shown}: transformers cannot read its config.json ({_first_line(exc)}).") from None
    check_decoder_config(config, shown, trust_remote_code=trust_remote_code)
    if weights:
        check_quantization_dependency(config, shown)
    if raw is not None and weights:
        names = {p.name for p in path.iterdir()}
        shards = any(
            n.endswith(".safetensors") or (n.startswith(("model", "pytorch_model")) and n.endswith(".bin"))
            for n in names
        )
        if not shards and not any(w in names for w in WEIGHT_FILES):
            raise FileNotFoundError(
                f"{shown} holds config.json but no weights ({', '.join(WEIGHT_FILES)}); give the directory "
                "save_pretrained / trainer.save_model wrote (an adapter goes to --adapter)."
            )
    return config


def check_quantization_dependency(config: Any, shown: str = "the model") -> None:
    """The package a pre-quantized checkpoint needs to load: a bitsandbytes ``quantization_config``
    in its ``config.json`` (``quant_method: bitsandbytes``) needs bitsandbytes installed, checked
    before the weights load (transformers would fail with a traceback inside ``from_pretrained``)."""
    from midblock_plugin.architecture import config_quantization

    qc = (
        getattr(config, "quantization_config", None)
        if not isinstance(config, dict)
        else config.get("quantization_config")
    )
    if qc is None:
        return
    kind, _ = config_quantization(config)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    method = str(getattr(method, "value", method) or "bitsandbytes")
    if method == "bitsandbytes":
        what = {"bnb-4bit": "4-bit bitsandbytes", "bnb-8bit": "8-bit bitsandbytes"}.get(kind or "", "bitsandbytes")
        check_dependency(
            "bitsandbytes",
            f"{shown} is a {what} checkpoint (quantization_config in its config.json); loading it",
            "or give the unquantized model",
        )


def _check_raw_config(raw: dict, cfg_file: Path, shown: str, trust_remote_code: bool) -> None:
    from transformers import __version__ as tf_version
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ValueError(
            f"{shown}: {cfg_file} has no 'model_type'; a Hugging Face config.json names its architecture, "
            'e.g. "model_type": "llama". Re-save the model with save_pretrained.'
        )
    if model_type not in CONFIG_MAPPING_NAMES:
        if raw.get("auto_map"):
            if not trust_remote_code:
                raise ValueError(
                    f"{shown}: model_type {model_type!r} is custom code (auto_map in {cfg_file}); it runs only with "
                    "trust_remote_code (midblock eval: --trust-remote-code), and only if you trust its source."
                )
        else:
            raise ValueError(
                f"{shown}: model_type {model_type!r} in {cfg_file} is not a model type transformers {tf_version} knows; "
                "check the file, or upgrade transformers if the architecture is newer."
            )
    for key in _LAYER_KEYS:
        value = raw.get(key)
        if key in raw and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(
                f"{shown}: {cfg_file} says {key}={value!r}; a decoder has at least one layer (an integer >= 1)."
            )


def check_decoder_config(config: Any, shown: str = "the model", *, trust_remote_code: bool = False) -> None:
    """``config`` is a decoder-only causal LM (see :func:`midblock_plugin.architecture.check_decoder`)."""
    from midblock_plugin.architecture import check_decoder

    check_decoder(config, shown, trust_remote_code=trust_remote_code)


# --------------------------------------------------------------------------- adapters


def safetensors_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
    """Tensor name -> shape, from a ``.safetensors`` header (no tensor is read)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is not a safetensors file (it is {len(head)} bytes long).")
        size = int.from_bytes(head, "little")
        if size <= 0 or size > 100_000_000:
            raise ValueError(f"{path} is not a safetensors file (header length {size}).")
        try:
            header = json.loads(fh.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path} is not a safetensors file (its header is not JSON).") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file (its header is not a JSON object).")
    return {k: list(v.get("shape", [])) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def read_adapter_config(adapter: str | os.PathLike, flag: str = "--adapter") -> dict:
    """``adapter_config.json`` of a PEFT adapter directory, checked to be a JSON object."""
    path = Path(os.fspath(adapter)).expanduser()
    shown = f"{flag} {os.fspath(adapter)!r}"
    if not path.is_dir():
        raise FileNotFoundError(f"{shown}: no such directory; give a directory written by PeftModel.save_pretrained.")
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{shown} has no adapter_config.json; give a directory written by PeftModel.save_pretrained."
        )
    return read_json_object(path / "adapter_config.json", shown)


_STACK_KEY = re.compile(r"(?:^|\.)(layers|h|blocks|layer)\.(\d+)\.")


def check_adapter(
    adapter: str | os.PathLike, base_config: Any, flag: str = "--adapter", base_flag: str = "the base model"
) -> dict:
    """A PEFT adapter directory fits ``base_config``: its layers exist in the base, its
    modules are the base's, and its LoRA matrices have the base's widths. Reads
    ``adapter_config.json`` and the safetensors header only. Returns the adapter config."""
    from midblock_plugin.architecture import ModelLayout, num_layers_from_config
    from midblock_plugin.window import WindowError

    cfg = read_adapter_config(adapter, flag)
    path = Path(os.fspath(adapter)).expanduser()
    shown = f"{flag} {os.fspath(adapter)!r}"
    weights = next((path / w for w in ADAPTER_WEIGHT_FILES if (path / w).is_file()), None)
    if weights is None:
        raise FileNotFoundError(
            f"{shown} has adapter_config.json but no adapter weights ({' or '.join(ADAPTER_WEIGHT_FILES)}); "
            "give the directory PeftModel.save_pretrained / trainer.save_model wrote."
        )
    base_arch = ", ".join(getattr(base_config, "architectures", None) or []) or type(base_config).__name__
    saved_from = (
        ((cfg.get("auto_mapping") or {}).get("base_model_class"))
        if isinstance(cfg.get("auto_mapping"), dict)
        else None
    )
    origin = f" (it was saved from a {saved_from})" if saved_from and saved_from not in base_arch else ""
    num_layers = num_layers_from_config(base_config)
    lt = cfg.get("layers_to_transform")
    wanted = [lt] if isinstance(lt, int) else lt if isinstance(lt, list) else []
    beyond = sorted(i for i in wanted if isinstance(i, int) and not 0 <= i < num_layers)
    if beyond:
        raise ValueError(
            f"{shown} trains layer {beyond[-1]} (layers_to_transform {lt}) but {base_flag} ({base_arch}) has "
            f"{num_layers} layers (0..{num_layers - 1}){origin}; give the base model the adapter was trained from."
        )
    try:
        layout = ModelLayout.from_config(base_config)
    except (WindowError, ValueError, RuntimeError, TypeError, AttributeError):
        return cfg  # a layout midblock does not know: the layer count is all that can be checked
    prefix = layout.layers_path + "."
    if weights.suffix != ".safetensors":
        _check_targets(cfg, layout, shown, base_flag, base_arch, origin)
        return cfg
    shapes = safetensors_shapes(weights)
    for key, shape in sorted(shapes.items()):
        if ".lora_" not in key:
            continue
        module = key.split(".lora_", 1)[0].removeprefix("base_model.model.")
        if not module.startswith(prefix):
            if _STACK_KEY.search(module):
                raise ValueError(
                    f"{shown} holds weights for {module}, but {base_flag} ({base_arch}) has its layers at "
                    f"'{layout.layers_path}'{origin}; give the base model the adapter was trained from."
                )
            continue  # a module outside the layer stack (e.g. lm_head): PEFT checks it on load
        index_text, _, rel = module[len(prefix) :].partition(".")
        if not index_text.isdigit():
            continue
        index = int(index_text)
        if index >= num_layers:
            raise ValueError(
                f"{shown} holds weights for layer {index} ({module}) but {base_flag} ({base_arch}) has {num_layers} "
                f"layers (0..{num_layers - 1}){origin}; give the base model the adapter was trained from."
            )
        linears = layout.linears[index] if index < len(layout.linears) else {}
        if rel not in linears:
            raise ValueError(
                f"{shown} targets {rel.rsplit('.', 1)[-1]!r} ({module}), which {base_flag} ({base_arch}) does not have"
                f"{origin}; its linear modules per layer: {', '.join(linears) or 'none'}."
            )
        lin = linears[rel]
        kind = key.split(".lora_", 1)[1]
        if len(shape) == 2 and kind.startswith("A.") and shape[1] != lin.in_features:
            got, want = shape[1], lin.in_features
        elif len(shape) == 2 and kind.startswith("B.") and shape[0] != lin.out_features:
            got, want = shape[0], lin.out_features
        else:
            continue
        raise ValueError(
            f"{shown}: its LoRA matrices for {module} have width {got}, but that module of {base_flag} has width {want} "
            f"(tensor {key} has shape {shape}){origin}: the adapter was trained on a model of another size; give "
            "the base model it was trained from."
        )
    return cfg


def _check_targets(cfg: dict, layout: Any, shown: str, base_flag: str, base_arch: str, origin: str) -> None:
    targets = cfg.get("target_modules")
    if not isinstance(targets, list) or not targets or not layout.linears:
        return
    names = list(layout.linears[0])
    if not any(n == t or n.endswith("." + t) for t in targets if isinstance(t, str) for n in names):
        raise ValueError(
            f"{shown} targets {targets}, none of which {base_flag} ({base_arch}) has{origin}; its linear modules per "
            f"layer: {', '.join(names)}."
        )
