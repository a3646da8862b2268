#!/usr/bin/env bash
# torchrun: run this on every node, from the root of a midblock checkout:
#   NODE_RANK=0 MASTER_ADDR=node-001 bash examples/multinode/launch_torchrun.sh   # on node-001
#   NODE_RANK=1 MASTER_ADDR=node-001 bash examples/multinode/launch_torchrun.sh   # on node-002, ...
# Environment: NNODES (4), NODE_RANK (0..NNODES-1, required), NPROC_PER_NODE (8, the GPUs per
# node), MASTER_ADDR (node 0's address, required), MASTER_PORT (29500), ZERO (zero3,
# zero3_offload or a JSON path), MODEL, DATA, OUT. Arguments go to the training script after
# the recipe in recipe.sh and override it (--max-steps 100, --no-bf16, ...).
set -euo pipefail
source examples/multinode/recipe.sh
exec torchrun --nnodes "${NNODES:-4}" --nproc_per_node "${NPROC_PER_NODE:-${GPUS_PER_NODE:-8}}" \
  --node_rank "${NODE_RANK:?set NODE_RANK (0 on the first node)}" \
  --master_addr "${MASTER_ADDR:?set MASTER_ADDR (the first node)}" --master_port "${MASTER_PORT:-29500}" \
  "$TRAIN_SCRIPT" --deepspeed "${ZERO:-zero3}" "${RECIPE[@]}" "$@"
