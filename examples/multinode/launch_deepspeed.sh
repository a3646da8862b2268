#!/usr/bin/env bash
# The deepspeed launcher with a hostfile (one line per node, "slots" = GPUs), from the root of a
# midblock checkout. Two ways:
#   bash examples/multinode/launch_deepspeed.sh                  # on node 0 only: it reaches the
#       others over passwordless ssh (pdsh) and appends --local_rank to the script's arguments
#   NODE_RANK=<i> MASTER_ADDR=<node 0> bash examples/multinode/launch_deepspeed.sh   # on every
#       node, no ssh (deepspeed --no_ssh), like torchrun
# Environment: HOSTFILE (examples/multinode/hostfile), MASTER_ADDR (with ssh: found by
# deepspeed), MASTER_PORT (29500), NODE_RANK, ZERO, MODEL, DATA, OUT. Arguments go to the
# training script after the recipe in recipe.sh and override it.
set -euo pipefail
source examples/multinode/recipe.sh
LAUNCH=(--hostfile "${HOSTFILE:-examples/multinode/hostfile}" --master_port "${MASTER_PORT:-29500}")
if [[ -n "${NODE_RANK:-}" ]]; then
  LAUNCH+=(--no_ssh --node_rank "$NODE_RANK" --master_addr "${MASTER_ADDR:?set MASTER_ADDR (node 0) with NODE_RANK}")
elif [[ -n "${MASTER_ADDR:-}" ]]; then
  LAUNCH+=(--master_addr "$MASTER_ADDR")
fi
exec deepspeed "${LAUNCH[@]}" "$TRAIN_SCRIPT" --deepspeed "${ZERO:-zero3}" "${RECIPE[@]}" "$@"
