"""ZeRO-3 memory planner, model states: per-GPU parameters, gradients and optimizer states of
mid-block vs uniform LoRA vs full fine-tuning.

**Model states.** Same accounting as DeepSpeed's ``estimate_zero3_model_states_mem_needs``
(18 bytes per trained parameter: 2 for the bf16/fp16 weight, 4 for the fp32 gradient
partition, 12 for the fp32 master weight and Adam's two moments; plus a gather buffer of 4
bytes times the largest module), extended to *partly frozen* models: a frozen parameter
costs only its 2-byte weight, partitioned across all GPUs. For full fine-tuning the figures
equal DeepSpeed's own estimator (``tests/test_memory.py`` checks it). On a quantized base
(QLoRA: a plan of a bitsandbytes 4-/8-bit model, or of a ``config.json`` with its
``quantization_config``) the LoRA rows count the decoder's linear weights at their stored size
(:data:`QUANTIZED_WEIGHT_BYTES`); the full fine-tuning row stays the bf16 comparison.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from midblock_plugin.plan import MidBlockPlan


WEIGHT_BYTES = 2
GRAD_BYTES = 4
OPTIM_BYTES = 12
GATHER_BYTES = 4
CPU_BUFFER_FACTOR = 1.5  # DeepSpeed's additional_buffer_factor
#: bytes per element of a frozen weight stored quantized (QLoRA): NF4 holds two values a byte,
#: plus one 8-bit absmax per 64-value block with double quantization (Axolotl's and the QLoRA
#: paper's default); int8 one byte (its per-row fp32 scales are left out)
QUANTIZED_WEIGHT_BYTES = {"bnb-4bit": 0.5 + 1 / 64, "bnb-8bit": 1.0}


@dataclass
class MemoryEstimate:
    method: str
    trainable_params: int
    total_params: int
    params_gb: float
    grads_gb: float
    optimizer_gb: float
    gather_buffer_gb: float
    gpu_total_gb: float
    cpu_per_node_gb: float

    def to_dict(self) -> dict:
        return asdict(self)


def _estimate(
    method: str,
    total: int,
    trainable: int,
    largest: int,
    gpus: int,
    nodes: int,
    offload: bool,
    quantized: int = 0,
    quantized_bytes: float = WEIGHT_BYTES,
) -> MemoryEstimate:
    """``quantized`` of the ``total`` parameters are frozen weights stored at ``quantized_bytes``
    each (a QLoRA base); the others at ``WEIGHT_BYTES``."""
    world = gpus * nodes
    gb = 1024**3
    weights = WEIGHT_BYTES * (total - quantized) + quantized_bytes * quantized
    params = weights / world
    grads = GRAD_BYTES * trainable / world
    optim = OPTIM_BYTES * trainable / world
    gather = GATHER_BYTES * largest
    if offload:  # optimizer and parameters offloaded to CPU (zero3_offload.json)
        gpu = gather
        cpu = (weights + (GRAD_BYTES + OPTIM_BYTES) * trainable) / nodes * CPU_BUFFER_FACTOR
        shown = (0.0, 0.0, 0.0)
    else:
        gpu = gather + int((weights + (GRAD_BYTES + OPTIM_BYTES) * trainable) / world)
        cpu = largest * 4 * gpus * CPU_BUFFER_FACTOR
        shown = (params, grads, optim)
    return MemoryEstimate(
        method=method,
        trainable_params=trainable,
        total_params=total,
        params_gb=shown[0] / gb,
        grads_gb=shown[1] / gb,
        optimizer_gb=shown[2] / gb,
        gather_buffer_gb=gather / gb,
        gpu_total_gb=gpu / gb,
        cpu_per_node_gb=cpu / gb,
    )


def zero3_estimates(
    plan: MidBlockPlan, gpus_per_node: int, nodes: int = 1, offload: bool = False
) -> list[MemoryEstimate]:
    """Per-GPU (and per-node CPU) model-state memory for mid-block, uniform LoRA and full FT."""
    if plan.full_params is None or plan.largest_module_params is None:
        raise ValueError("the memory planner needs parameter counts: give a model or config, not only --num-layers.")
    for name, v in (("gpus_per_node", gpus_per_node), ("nodes", nodes)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be a positive integer (--gpus-per-node G --nodes N).")
    base = plan.full_params
    largest = plan.largest_module_params
    # a quantized base (QLoRA): its linear weights at their stored size in both LoRA rows; full
    # fine-tuning (which cannot train quantized weights) stays the bf16 comparison
    kind = getattr(plan.layout, "quantization", None)
    qlora = (
        {"quantized": plan.layout.quantized_params, "quantized_bytes": QUANTIZED_WEIGHT_BYTES[kind]} if kind else {}
    )
    tag = f", {kind[4]}-bit" if kind else ""
    rows = []
    if plan.mode == "lora":
        rows.append(
            _estimate(
                f"mid-block LoRA ({plan.window}{tag})",
                base + plan.trainable_params,
                plan.trainable_params,
                largest,
                gpus_per_node,
                nodes,
                offload,
                **qlora,
            )
        )
    else:
        rows.append(
            _estimate(
                f"mid-block full ({plan.window})", base, plan.trainable_params, largest, gpus_per_node, nodes, offload
            )
        )
    rows.append(
        _estimate(
            f"uniform LoRA r={plan.baseline_rank}{tag}",
            base + plan.uniform_lora_params,
            plan.uniform_lora_params,
            largest,
            gpus_per_node,
            nodes,
            offload,
            **qlora,
        )
    )
    rows.append(
        _estimate(
            "full fine-tuning" + (" (bf16 base)" if kind else ""), base, base, largest, gpus_per_node, nodes, offload
        )
    )
    return rows


def format_table(rows: list[MemoryEstimate], gpus_per_node: int, nodes: int, offload: bool) -> str:
    head = (
        f"ZeRO-3 model-state memory per GPU, {nodes} node(s) x {gpus_per_node} GPU(s)"
        f"{', optimizer+params offloaded to CPU' if offload else ''} (activations not included)"
    )
    lines = [
        head,
        f"{'method':<30}{'trainable':>14}{'params':>9}{'grads':>9}{'optim':>9}{'gather':>9}{'GPU GB':>9}{'CPU GB/node':>13}",
    ]
    for r in rows:
        lines.append(
            f"{r.method:<30}{r.trainable_params:>14,}{r.params_gb:>9.2f}{r.grads_gb:>9.2f}{r.optimizer_gb:>9.2f}"
            f"{r.gather_buffer_gb:>9.2f}{r.gpu_total_gb:>9.2f}{r.cpu_per_node_gb:>13.1f}"
        )
    return "\n".join(lines)
