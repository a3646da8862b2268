"""Two simulated nodes through Axolotl: the launch lines shipped in the 32B config, run as written.

``examples/axolotl/olmo2-32b-zero3.yml`` tells users to start ``torchrun --nnodes 2 ...
--rdzv_backend c10d --rdzv_endpoint $HEAD:29500 -m axolotl.cli.train CONFIG`` on every node
(or ``accelerate launch --config_file examples/multinode/accelerate_zero3.yaml -m
axolotl.cli.train ...``). Here each "node" is its own launch of that command with one process,
the two meeting on a loopback rendezvous, on the 32B config as the example tests run it (a tiny
OLMo2, local data, CPU precision, 2 steps), changed further only where a comparison must be
exact: plain SGD, no dropout, sequential batches, and rows cut to one length (64 tokens; every
GSM8K row is longer). The adapter equals the one of a single process with the same global batch
(2 nodes x micro-batch 1 vs micro-batch 2, the shipped accumulation of 2) to 1e-5.
Why one length: Axolotl sets ``average_tokens_across_devices=False``
(``axolotl/core/builders/base.py``), so each rank divides its loss by its own token count and
ranks are then averaged, while one process divides by the tokens of the whole batch; with rows
of unequal length the two weigh tokens differently (measured at the shipped 128 tokens: 2.6e-4
with accumulation, 8.3e-4 without). That is the trainer's arithmetic, the same on one node.
The CPU scaffolding (gloo) is the one of ``tests/axolotl/test_zero3.py``.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from midblock_plugin.testing.launch import adapter_difference, free_port, run_nodes
from tests.axolotl.helpers import ENV, ROOT, SHIM
from tests.axolotl.test_examples import EXAMPLES, as_tested
from tests.axolotl.test_zero3 import COMMON


pytestmark = [pytest.mark.axolotl, pytest.mark.slow]

NODES = 2
ATOL = 1e-5
TIMEOUT_S = 600
CONFIG = "examples/axolotl/olmo2-32b-zero3.yml"


def shipped_launch(command: str) -> list[str]:
    """The launch command in the 32B config's comment that begins with ``command``, as words."""
    lines = [line[1:].strip() for line in (ROOT / CONFIG).read_text().splitlines() if line.startswith("#")]
    for i, line in enumerate(lines):
        if line.startswith(command) or line.startswith(f"(or: {command}"):
            text = line[line.index(command) :]
            while text.endswith("\\"):
                i += 1
                text = text[:-1] + " " + lines[i]
            return shlex.split(text.rstrip(")").replace("...", ""))
    raise AssertionError(f"no '{command}' launch line in {CONFIG}")


def node_env() -> dict:
    env = dict(
        os.environ,
        **ENV,
        DS_ACCELERATOR="cpu",
        MIDBLOCK_CPU_GLOO_SHIM="1",
        PYTHONFAULTHANDLER="1",
        PYTHONPATH=os.pathsep.join([str(SHIM), str(ROOT)]),
    )
    env["PATH"] = (
        str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    )  # torchrun / accelerate of this venv
    return env


def on_nodes(commands: list[list[str]], cwd: Path, logs: Path) -> str:
    return run_nodes([(cmd, node_env()) for cmd in commands], cwd, logs, TIMEOUT_S)


@pytest.fixture(scope="module")
def setup(workspace):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed in this environment")
    from midblock_plugin.testing import save_tiny

    root = workspace.root / "multinode"
    model = save_tiny(root / "tiny-olmo2", arch="olmo2", num_layers=10)
    shipped = yaml.safe_load((EXAMPLES / "olmo2-32b-zero3.yml").read_text())

    def config(name: str, **changes) -> Path:
        cfg = as_tested(name, shipped, model, root)
        cfg.update(COMMON, sequence_len=64, **changes)
        path = root / f"{name}.yml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    # one process, no DeepSpeed: micro-batch 2 = the 2 nodes' global batch
    single = config("single", deepspeed=None, micro_batch_size=NODES * shipped["micro_batch_size"])
    on_nodes([[sys.executable, "-m", "axolotl.cli.train", str(single)]], root, root / "single-logs")
    return {"root": root, "config": config, "single": root / "single"}


def assert_same_adapter(out: Path, single: Path) -> float:
    return adapter_difference(out, single, set(range(2, 8)), ATOL)  # 01110 of 10 layers


def _node_command(words: list[str], config: Path, rank: int, port: int) -> list[str]:
    out = []
    for w in words:
        w = w.replace("$NODE_RANK", str(rank)).replace("$HEAD", "127.0.0.1").replace(":29500", f":{port}")
        out.append(str(config) if w == CONFIG else w)
    return out


def test_torchrun_two_nodes_as_the_32b_config_says(setup):
    words = shipped_launch("torchrun")
    assert words[words.index("--nnodes") + 1] == str(NODES) and "-m" in words and CONFIG in words
    words[words.index("--nproc_per_node") + 1] = "1"  # one process per simulated node
    config = setup["config"]("torchrun")
    port = free_port()
    text = on_nodes(
        [_node_command(words, config, rank, port) for rank in range(NODES)],
        setup["root"],
        setup["root"] / "torchrun-logs",
    )
    assert "deepspeed      ZeRO-3, parameters partitioned" in text and '"world_size": 2' in text
    assert "CheckpointError" not in text
    assert_same_adapter(setup["root"] / "torchrun", setup["single"])


def test_accelerate_two_machines_as_the_32b_config_says(setup):
    words = shipped_launch("accelerate launch")
    assert words[:2] == ["accelerate", "launch"] and "axolotl.cli.train" in words
    config = setup["config"]("accelerate")
    port = free_port()
    cmds = []
    for rank in range(NODES):
        launch = words[: words.index("-m")]
        launch += [
            "--num_machines",
            str(NODES),
            "--num_processes",
            str(NODES),
            "--machine_rank",
            str(rank),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            str(port),
        ]
        cmds.append(launch + ["-m", "axolotl.cli.train", str(config)])
    # the accelerate config's DeepSpeed JSON path is relative to the launch directory (a checkout)
    text = on_nodes(cmds, ROOT, setup["root"] / "accelerate-logs")
    assert "deepspeed      ZeRO-3, parameters partitioned" in text and '"world_size": 2' in text
    assert_same_adapter(setup["root"] / "accelerate", setup["single"])
