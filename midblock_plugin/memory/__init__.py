"""ZeRO-3 memory planner: per-GPU memory of mid-block vs uniform LoRA vs full fine-tuning.

Two questions, one module each:

* :mod:`.states`: model states (parameters, gradients, optimizer states) per GPU, DeepSpeed's
  accounting extended to partly frozen and quantized models (:func:`zero3_estimates`);
* :mod:`.activations`: what autograd keeps for the backward of one micro-batch, with and
  without checkpointing and backward truncation (:func:`activation_estimates`).

``midblock plan MODEL --zero3 [--micro-batch B --seq-len S]`` prints both; docs/memory.md.
"""

from midblock_plugin.memory.activations import (  # noqa: F401
    DTYPE_BYTES,
    NOT_MODELLED,
    ActivationEstimate,
    ModelDims,
    activation_estimates,
    activations_to_json,
    format_activation_table,
    model_dims,
)
from midblock_plugin.memory.states import (  # noqa: F401
    GATHER_BYTES,
    GRAD_BYTES,
    OPTIM_BYTES,
    QUANTIZED_WEIGHT_BYTES,
    WEIGHT_BYTES,
    MemoryEstimate,
    format_table,
    zero3_estimates,
)
