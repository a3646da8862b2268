"""Shared set-up for the Axolotl tests: a tiny model, a small GSM8K file, configs, runs."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


ROOT = Path(__file__).resolve().parents[2]
PLUGIN = "midblock_plugin.integrations.axolotl.MidBlockPlugin"
#: The short path (the same class), promised to users: ``plugins: [midblock_plugin.axolotl.MidBlockPlugin]``.
SHORT_PLUGIN = "midblock_plugin.axolotl.MidBlockPlugin"
RECORDER = "tests.axolotl.hook_recorder.HookRecorderPlugin"
#: Test-only CPU scaffolding for Axolotl's DeepSpeed path (gloo instead of NCCL); never shipped.
SHIM = ROOT / "tests" / "axolotl" / "zero3_shim"
NUM_LAYERS = 5
#: 01110 on 5 layers: segments [0,1) [1,2) [2,3) [3,4) [4,5) -> layers 1, 2, 3
WINDOW = [1, 2, 3]
RANK = 4  # lora_r of the uniform baseline
MATCHED_RANK = RANK * NUM_LAYERS // len(WINDOW)  # floor(4 * 5 / 3) = 6


def axolotl_version() -> tuple[int, ...]:
    """The installed Axolotl's release as a tuple, e.g. ``(0, 21, 0)``; ``()`` without Axolotl."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return tuple(int(p) for p in version("axolotl").split("+")[0].split(".")[:3] if p.isdigit())
    except PackageNotFoundError:
        return ()


#: Axolotl 0.20+ loads every plugin installed under the ``axolotl.plugins`` entry point for every run.
DISCOVERS_ENTRY_POINTS = axolotl_version() >= (0, 20)

#: Environment for every Axolotl subprocess (offline, no telemetry, CPU).
ENV = {
    "AXOLOTL_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "CUDA_VISIBLE_DEVICES": "",
    # one thread per process: on a small shared CPU, torch's thread pool contending with other
    # processes made a 2-step run of a tiny model 10x slower (measured: 33 s vs 3 s of train_runtime)
    "OMP_NUM_THREADS": "1",
}


@dataclass
class Run:
    """The result of one ``python -m axolotl.cli.*`` subprocess."""

    returncode: int
    output: str
    seconds: float
    output_dir: Path | None = None
    stdout: str = ""  # standard output alone (``output`` is stdout + stderr)

    def check(self) -> "Run":
        assert self.returncode == 0, f"axolotl exited {self.returncode}:\n{self.output[-6000:]}"
        return self


@dataclass
class Workspace:
    root: Path
    model_dir: Path
    data: Path
    prepared: Path

    @classmethod
    def create(cls, root: Path) -> "Workspace":
        from midblock_plugin.testing import gsm8k_rows, save_tiny

        model_dir = save_tiny(root / "tiny-llama", arch="llama", num_layers=NUM_LAYERS, hidden=64)
        data = root / "gsm8k16.jsonl"
        with open(data, "w", encoding="utf-8") as fh:
            for row in gsm8k_rows("train", n=16):
                fh.write(json.dumps({"instruction": row["question"], "input": "", "output": row["answer"]}) + "\n")
        return cls(root=root, model_dir=Path(model_dir), data=data, prepared=root / "prepared")

    def config(self, name: str, **overrides: Any) -> dict:
        """A complete CPU config for the tiny model; ``overrides`` replace keys (None deletes)."""
        cfg: dict[str, Any] = {
            "base_model": str(self.model_dir),
            "datasets": [{"path": str(self.data), "ds_type": "json", "type": "alpaca"}],
            "dataset_prepared_path": str(self.prepared),
            "dataset_num_proc": 1,
            "val_set_size": 0,
            "sequence_len": 64,
            "excess_length_strategy": "truncate",
            "train_on_inputs": True,
            "micro_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "max_steps": 2,
            "learning_rate": 0.01,
            "optimizer": "adamw_torch",
            "lr_scheduler": "constant",
            "seed": 42,
            "bf16": False,
            "fp16": False,
            "tf32": False,
            "logging_steps": 1,
            "save_strategy": "no",
            "output_dir": str(self.root / name),
            # the two lines a user adds to an existing LoRA config
            "plugins": [PLUGIN],
            "adapter": "midblock",
            "midblock_segments": "01110",
            "lora_r": RANK,
            "lora_alpha": 2 * RANK,
            "lora_target_modules": ["q_proj", "v_proj"],
        }
        for key, value in overrides.items():
            if value is None:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        return cfg

    def write(self, cfg: dict, name: str) -> Path:
        path = self.root / f"{name}.yml"
        path.write_text(yaml.safe_dump(copy.deepcopy(cfg), sort_keys=False), encoding="utf-8")
        return path

    def axolotl(
        self,
        module: str,
        config_path: Path,
        *args: str,
        env: dict | None = None,
        timeout: int = 480,
        stdin_text: str | None = None,
    ) -> Run:
        """Run ``python -m axolotl.cli.<module> config`` in a subprocess (``stdin_text``: its standard
        input, e.g. the prompt of ``inference``; none by default)."""
        full_env = dict(os.environ)
        full_env.update(ENV)
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full_env.get("PYTHONPATH", "")) if p)
        full_env.update(env or {})
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", f"axolotl.cli.{module}", str(config_path), *args],
            cwd=self.root,
            env=full_env,
            **({"stdin": subprocess.DEVNULL} if stdin_text is None else {"input": stdin_text}),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        out_dir = yaml.safe_load(Path(config_path).read_text()).get("output_dir")
        return Run(
            proc.returncode,
            proc.stdout + proc.stderr,
            time.monotonic() - start,
            Path(out_dir) if out_dir else None,
            proc.stdout,
        )

    def torchrun(self, config_path: Path, env: dict | None = None, timeout: int = 600) -> Run:
        """``python -m torch.distributed.run --nproc_per_node 2 -m axolotl.cli.train config`` on CPU:
        gloo through the test-only shim (``tests/axolotl/zero3_shim``), DeepSpeed's CPU accelerator;
        the ``deepspeed`` key comes from the config."""
        full_env = dict(os.environ)
        full_env.update(ENV)
        full_env.update(
            {
                "DS_ACCELERATOR": "cpu",
                "MIDBLOCK_CPU_GLOO_SHIM": "1",
                "PYTHONPATH": os.pathsep.join([str(SHIM), str(ROOT)]),
            }
        )
        full_env.update(env or {})
        with socket.socket() as sock:  # a free port for the rendezvous
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            "-m",
            "axolotl.cli.train",
            str(config_path),
        ]
        start = time.monotonic()
        proc = subprocess.run(
            cmd, cwd=self.root, env=full_env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
        out_dir = yaml.safe_load(Path(config_path).read_text()).get("output_dir")
        return Run(
            proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start, Path(out_dir) if out_dir else None
        )

    def train(self, name: str, env: dict | None = None, **overrides: Any) -> Run:
        cfg = self.config(name, **overrides)
        return self.axolotl("train", self.write(cfg, name), env=env)


# --------------------------------------------------------------------------- weights


def load_state(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def layer_of(name: str) -> int | None:
    """Decoder layer index in a parameter / tensor name (``...layers.3...``), else None."""
    parts = name.split(".")
    for a, b in zip(parts, parts[1:]):
        if a == "layers" and b.isdigit():
            return int(b)
    return None


def changed_tensors(before: dict, after: dict, atol: float = 0.0) -> set[str]:
    import torch

    assert set(before) == set(after), set(before) ^ set(after)
    return {k for k in before if not torch.allclose(before[k].float(), after[k].float(), rtol=0, atol=atol)}


def validate_args(**data):
    """Validate a config through the plugin's pydantic model alone (no Axolotl run)."""
    from midblock_plugin.integrations.axolotl.args import MidBlockArgs

    return MidBlockArgs.model_validate({"adapter": "midblock", "plugins": [PLUGIN], **data})


def args_error(**data) -> str:
    """The validation error text of a config that must be rejected."""
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        validate_args(**data)
    return str(info.value)


# --------------------------------------------------------------------------- YAML through Axolotl's loader


def yaml_config(workspace: Workspace, name: str, snippet: str) -> Path:
    """Write the complete CPU config of ``workspace`` with the raw YAML ``snippet`` appended, as a
    user would type it (so YAML, not Python, decides that ``01110`` is a number); the keys the
    snippet sets are removed from the base config first."""
    import re

    keys = re.findall(r"^([A-Za-z_][\w-]*)\s*:", snippet, flags=re.M)
    cfg = workspace.config(name, midblock_segments=None)
    for key in keys:
        cfg.pop(key, None)
    path = workspace.root / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False) + snippet.strip() + "\n", encoding="utf-8")
    return path


def axolotl_load_error(path: Path) -> str:
    """The error text of ``axolotl.cli.config.load_cfg`` (the loader behind ``axolotl train``) for a
    config file it must reject while validating, before any model or data is loaded."""
    import pytest
    from axolotl.cli.config import load_cfg

    with pytest.raises(Exception) as info:  # noqa: PT011 - pydantic's ValidationError (a ValueError)
        load_cfg(str(path))
    return str(info.value)


def axolotl_validate(path: Path):
    """A config file through Axolotl's validation (plugins registered, the merged schema), as
    ``load_cfg`` does before it sets up logging and output directories."""
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(yaml.safe_load(path.read_text(encoding="utf-8")))
    prepare_plugins(cfg)
    return validate_config(cfg)
