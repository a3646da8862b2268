"""Multi-node, simulated: the shipped launch recipes in ``examples/multinode/`` as two nodes on one machine.

Each "node" is its own launch of the shipped script, with one process, the two meeting on a
loopback rendezvous (127.0.0.1, a free port): ``launch_torchrun.sh`` (``torchrun --nnodes 2
--node_rank 0|1``), ``launch_accelerate.sh`` (``accelerate launch --num_machines 2
--machine_rank 0|1``), ``slurm_zero3.sbatch`` run as SLURM would run it for a 2-node job (a
stand-in ``srun`` starts its per-node command once per node with ``SLURM_NODEID`` 0|1; a
stand-in ``scontrol`` expands the node list) and ``launch_deepspeed.sh`` with a 2-host
hostfile (``deepspeed --no_ssh --node_rank 0|1``). Every one trains the TRL example with the
recipe in ``recipe.sh`` (ZeRO-3, gradient checkpointing, 4 sequences x 8 accumulation steps
per process, segments 01110, rank 64, alpha 128), changed only where a CPU test must: a tiny
saved model, 2 steps of SGD on 128 GSM8K rows in file order, no dropout, float32. The adapter
equals the one of a single process (no DeepSpeed) with the same global batch to 1e-5.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from midblock_plugin.testing import GSM8K_DIR, save_tiny
from midblock_plugin.testing.launch import adapter_difference, free_port, run_nodes


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "trl" / "sft_midblock.py"
MULTINODE = ROOT / "examples" / "multinode"
NODES = 2
#: float32 on CPU with SGD: the runs differ only in reduction order (measured: 7.5e-9).
ATOL = 1e-5
TIMEOUT_S = 600

pytestmark = pytest.mark.slow


def recipe() -> list[str]:
    """The training arguments every shipped launcher passes (``RECIPE`` in ``recipe.sh``)."""
    out = subprocess.run(
        ["bash", "-c", 'source examples/multinode/recipe.sh && printf "%s\\0" "$TRAIN_SCRIPT" "${RECIPE[@]}"'],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        env={"PATH": os.environ["PATH"]},
    ).stdout
    script, *args = out.split("\0")[:-1]
    assert ROOT / script == SCRIPT
    return args


def _overrides(model_dir) -> list[str]:
    """What a CPU test changes in the recipe (appended: the example keeps an option's last value)."""
    return [
        "--model",
        str(model_dir),
        "--data",
        str(GSM8K_DIR / "train.jsonl"),
        "--num-examples",
        "128",
        "--max-steps",
        "2",
        "--optim",
        "sgd",
        "--lr",
        "0.5",
        "--seed",
        "7",
        "--lora-dropout",
        "0",
        "--sequential",
        "--no-bf16",
    ]


def _env(**extra) -> dict:
    """The launchers are found on PATH (this interpreter's environment first), as on a cluster."""
    bin_dir = str(Path(sys.executable).parent)
    # PYTHONFAULTHANDLER: a rank that dies on a signal (abort, segfault) prints its Python stacks
    return dict(
        os.environ,
        PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
        OMP_NUM_THREADS="1",
        PYTHONFAULTHANDLER="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        **extra,
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    model_dir = save_tiny(root / "model", "llama", num_layers=8, seed=7)
    args = recipe()
    batch = int(args[args.index("--batch-size") + 1])
    single = root / "single"
    # one process, no DeepSpeed, the same global batch (2 nodes x batch per node; the recipe's --grad-accum)
    run_nodes(
        [
            (
                [
                    sys.executable,
                    str(SCRIPT),
                    *args,
                    *_overrides(model_dir),
                    "--batch-size",
                    str(NODES * batch),
                    "--output-dir",
                    str(single),
                ],
                _env(),
            )
        ],
        ROOT,
        root / "single-logs",
    )
    return {"root": root, "model_dir": model_dir, "single": single}


def assert_same_adapter(out: Path, single: Path) -> float:
    return adapter_difference(out, single, {1, 2, 3, 4, 5}, ATOL)  # L=8, mask 01110


def _check_run(text: str) -> None:
    assert "ZeRO-3, parameters partitioned" in text
    assert text.count("gradient checkpointing: non-reentrant (the default)") == 1  # printed once, by rank 0
    assert "kept non-reentrant" in text  # TRL's PEFT + ZeRO-3 switch to reentrant was undone


def test_torchrun_two_nodes(setup):
    out = setup["root"] / "torchrun"
    env = _env(NNODES=str(NODES), NPROC_PER_NODE="1")
    cmd = ["bash", str(MULTINODE / "launch_torchrun.sh"), *_overrides(setup["model_dir"]), "--output-dir", str(out)]
    text = run_nodes(
        [(cmd, dict(env, NODE_RANK=str(rank))) for rank in range(NODES)], ROOT, setup["root"] / "torchrun-logs"
    )
    _check_run(text)
    assert_same_adapter(out, setup["single"])


def test_accelerate_two_machines(setup):
    out = setup["root"] / "accelerate"
    env = _env(NNODES=str(NODES), NPROC_PER_NODE="1")
    cmd = ["bash", str(MULTINODE / "launch_accelerate.sh"), *_overrides(setup["model_dir"]), "--output-dir", str(out)]
    text = run_nodes(
        [(cmd, dict(env, NODE_RANK=str(rank))) for rank in range(NODES)], ROOT, setup["root"] / "accelerate-logs"
    )
    _check_run(text)
    assert_same_adapter(out, setup["single"])


#: Stand-ins for SLURM on one machine. ``srun`` runs its command once per node (the sbatch asks
#: for one task per node) with the variables SLURM sets, and with --kill-on-bad-exit semantics.
FAKE_SRUN = """#!{python}
import os, subprocess, sys, time
args = sys.argv[1:]
while args and args[0].startswith("-"):
    args.pop(0)
nodes = int(os.environ["SLURM_NNODES"])
procs = []
with open(os.environ["FAKE_SRUN_LOG"], "a") as log:
    for node in range(nodes):
        log.write(f"node {{node}}: {{args!r}}\\n")
        env = dict(os.environ, SLURM_NODEID=str(node), SLURM_PROCID=str(node), SLURM_LOCALID="0", SLURM_NTASKS=str(nodes))
        procs.append(subprocess.Popen(args, env=env))
rc = 0
while procs:
    for p in list(procs):
        if p.poll() is not None:
            procs.remove(p)
            if p.returncode and not rc:
                rc = p.returncode
                for q in procs:
                    q.terminate()
    time.sleep(0.2)
sys.exit(rc)
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
[[ "$1 $2" == "show hostnames" ]] && tr ',' '\\n' <<< "$3"
"""


def test_slurm_script_two_nodes(setup):
    sbatch = (MULTINODE / "slurm_zero3.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=1" in sbatch  # one launcher per node, as the stand-in srun runs it
    fake = setup["root"] / "fake-slurm"
    fake.mkdir()
    (fake / "srun").write_text(FAKE_SRUN.format(python=sys.executable))
    (fake / "scontrol").write_text(FAKE_SCONTROL)
    for f in ("srun", "scontrol"):
        (fake / f).chmod(0o755)
    out = setup["root"] / "slurm"
    env = _env(
        SLURM_NNODES=str(NODES),
        SLURM_JOB_NODELIST="127.0.0.1,localhost",
        SLURM_GPUS_ON_NODE="1",
        FAKE_SRUN_LOG=str(setup["root"] / "srun.log"),
    )
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    for name in ("MASTER_ADDR", "NNODES", "NODE_RANK", "NPROC_PER_NODE"):  # the sbatch derives these from SLURM
        env.pop(name, None)
    text = run_nodes(
        [
            (
                [
                    "bash",
                    str(MULTINODE / "slurm_zero3.sbatch"),
                    *_overrides(setup["model_dir"]),
                    "--output-dir",
                    str(out),
                ],
                env,
            )
        ],
        ROOT,
        setup["root"] / "slurm-logs",
    )
    launched = (setup["root"] / "srun.log").read_text().splitlines()
    assert [line.split(":")[0] for line in launched] == ["node 0", "node 1"]
    _check_run(text)
    assert_same_adapter(out, setup["single"])


def test_deepspeed_hostfile_two_nodes(setup):
    """``launch_deepspeed.sh`` with a 2-host hostfile in the shipped format, each node started
    on its own (``NODE_RANK`` set: ``deepspeed --no_ssh``); the shipped hostfile parses."""
    from deepspeed.launcher.runner import fetch_hostfile

    shipped = fetch_hostfile(str(MULTINODE / "hostfile"))
    assert shipped and all(slots > 0 for slots in shipped.values())
    hostfile = setup["root"] / "hostfile"
    hostfile.write_text("".join(f"node-{i:03d} slots=1\n" for i in range(1, NODES + 1)))
    out = setup["root"] / "deepspeed"
    env = _env(HOSTFILE=str(hostfile))
    cmd = ["bash", str(MULTINODE / "launch_deepspeed.sh"), *_overrides(setup["model_dir"]), "--output-dir", str(out)]
    text = run_nodes(
        [(cmd, dict(env, NODE_RANK=str(rank))) for rank in range(NODES)], ROOT, setup["root"] / "deepspeed-logs"
    )
    _check_run(text)
    assert_same_adapter(out, setup["single"])
