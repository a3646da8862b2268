#!/usr/bin/env bash
# torchrun: run this on every node (NODE_RANK=0..NNODES-1), MASTER_ADDR = node 0.
set -euo pipefail
torchrun --nnodes "${NNODES:-4}" --nproc_per_node "${GPUS_PER_NODE:-8}" --node_rank "${NODE_RANK:?set NODE_RANK}" \
  --master_addr "${MASTER_ADDR:?set MASTER_ADDR}" --master_port "${MASTER_PORT:-29500}" \
  examples/trl/sft_midblock.py --deepspeed "${ZERO:-zero3}" \
  --model "${MODEL:-allenai/OLMo-2-0325-32B}" --data "${DATA:-gsm8k_train.jsonl}" --num-examples 2000 \
  --segments 01110 --rank 64 --lora-alpha 128 --lr 5e-5 --bf16 --batch-size 4 --grad-accum 8 \
  --max-length 128 --gradient-checkpointing --output-dir "${OUT:-runs/olmo2-32b-midblock}"
