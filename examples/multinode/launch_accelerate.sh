#!/usr/bin/env bash
# accelerate launch with accelerate_zero3.yaml: run this on every node, from the root of a
# midblock checkout (the same variables as launch_torchrun.sh):
#   NODE_RANK=0 MASTER_ADDR=node-001 bash examples/multinode/launch_accelerate.sh   # on node-001, ...
# Environment: NNODES (4), NODE_RANK (required), NPROC_PER_NODE (8), MASTER_ADDR (required),
# MASTER_PORT (29500), ACCELERATE_CONFIG (examples/multinode/accelerate_zero3.yaml), MODEL,
# DATA, OUT. The DeepSpeed config is the yaml's deepspeed_config_file (no --deepspeed here).
# Arguments go to the training script after the recipe in recipe.sh and override it.
set -euo pipefail
source examples/multinode/recipe.sh
NNODES=${NNODES:-4}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}
exec accelerate launch --config_file "${ACCELERATE_CONFIG:-examples/multinode/accelerate_zero3.yaml}" \
  --num_machines "$NNODES" --num_processes "$((NNODES * NPROC_PER_NODE))" \
  --machine_rank "${NODE_RANK:?set NODE_RANK (0 on the first node)}" \
  --main_process_ip "${MASTER_ADDR:?set MASTER_ADDR (the first node)}" --main_process_port "${MASTER_PORT:-29500}" \
  "$TRAIN_SCRIPT" "${RECIPE[@]}" "$@"
