"""ZeRO-3 memory planner against DeepSpeed's own estimator."""

import json
import subprocess
import sys

import pytest
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params

from midblock_plugin import MidBlockConfig
from midblock_plugin.memory import zero3_estimates
from midblock_plugin.plan import build_plan
from midblock_plugin.testing import tiny_config, tiny_model


GB = 1024**3


@pytest.mark.parametrize("gpus, nodes", [(1, 1), (8, 1), (8, 4)])
@pytest.mark.parametrize("offload", [False, True])
def test_full_finetuning_equals_deepspeed_estimator(gpus, nodes, offload):
    model = tiny_model("qwen2", num_layers=10, hidden=128)
    total, largest = model_to_params(model)  # DeepSpeed's own counting
    plan = build_plan(tiny_config("qwen2", num_layers=10, hidden=128), MidBlockConfig(rank=8))
    assert plan.full_params == total and plan.largest_module_params == largest
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
        total,
        largest,
        num_gpus_per_node=gpus,
        num_nodes=nodes,
        cpu_offload=offload,
        cpu_offload_params=offload,
        zero_init=True,
    )
    full = zero3_estimates(plan, gpus, nodes, offload=offload)[-1]
    assert full.method == "full fine-tuning"
    assert full.gpu_total_gb * GB == pytest.approx(gpu, abs=1)
    assert full.cpu_per_node_gb * GB == pytest.approx(cpu, abs=1)


def test_midblock_and_uniform_lora_rows():
    plan = build_plan(tiny_config("llama", num_layers=16, hidden=128), MidBlockConfig(segments="01110", rank=16))
    mid, uni, full = zero3_estimates(plan, 8, 2)
    world = 16
    assert mid.trainable_params == plan.trainable_params and uni.trainable_params == plan.uniform_lora_params
    # frozen weights cost 2 bytes each; only trainable ones carry gradient (4) and optimizer (12) bytes
    assert mid.params_gb * GB == pytest.approx(2 * (plan.full_params + plan.trainable_params) / world)
    assert mid.grads_gb * GB == pytest.approx(4 * plan.trainable_params / world)
    assert mid.optimizer_gb * GB == pytest.approx(12 * plan.trainable_params / world)
    assert mid.gpu_total_gb < full.gpu_total_gb and uni.gpu_total_gb < full.gpu_total_gb
    # the same rank budget: mid-block is never above uniform
    assert mid.gpu_total_gb <= uni.gpu_total_gb + 1e-12


def test_cli_zero3_table_and_json(tmp_path):
    tiny_config("olmo2", num_layers=16, hidden=128).save_pretrained(tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "midblock_plugin.cli",
        "plan",
        str(tmp_path),
        "--zero3",
        "--gpus-per-node",
        "8",
        "--nodes",
        "4",
    ]
    r = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    mem = json.loads(r.stdout)["zero3_memory"]
    assert mem["nodes"] == 4 and [e["method"].split(" ")[0] for e in mem["estimates"]] == [
        "mid-block",
        "uniform",
        "full",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert "ZeRO-3 model-state memory per GPU, 4 node(s) x 8 GPU(s)" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "midblock_plugin.cli", "plan", "--num-layers", "16", "--zero3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "--zero3 needs a MODEL" in r.stderr
