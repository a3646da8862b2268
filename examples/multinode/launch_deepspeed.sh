#!/usr/bin/env bash
# The deepspeed launcher over passwordless ssh to the nodes in a hostfile (it appends --local_rank to the script).
set -euo pipefail
DS_CONFIG=$(python -c "from midblock_plugin.deepspeed_configs import config_path; print(config_path('${ZERO:-zero3}'))")
deepspeed --hostfile "${HOSTFILE:-examples/multinode/hostfile}" --master_port 29500 \
  examples/trl/sft_midblock.py --deepspeed "$DS_CONFIG" \
  --model "${MODEL:-allenai/OLMo-2-0325-32B}" --data "${DATA:-gsm8k_train.jsonl}" --num-examples 2000 \
  --segments 01110 --rank 64 --lora-alpha 128 --lr 5e-5 --bf16 --batch-size 4 --grad-accum 8 \
  --max-length 128 --gradient-checkpointing --output-dir "${OUT:-runs/olmo2-32b-midblock}"
