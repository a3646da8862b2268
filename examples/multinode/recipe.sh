# The training run every launcher in this directory starts (sourced by launch_torchrun.sh,
# slurm_zero3.sbatch through it, launch_deepspeed.sh and launch_accelerate.sh): mid-block LoRA
# on OLMo-2 32B, the paper's GSM8K recipe (mask 01110, matched budget of r=64, alpha 128),
# bf16, 4 sequences x 8 accumulation steps per GPU, gradient checkpointing (midblock picks the
# mode; add --reentrant / --no-reentrant to choose).
#
# Arguments given to a launch script are appended after these, and the example keeps the last
# value of an option, so they override (e.g. --max-steps 100, --model DIR, --no-bf16). The
# window is given as --segments here: to use --window or --layers instead, edit this line.
# Every launcher runs from the root of a midblock checkout (the paths are relative to it).
TRAIN_SCRIPT=examples/trl/sft_midblock.py
RECIPE=(
  --model "${MODEL:-allenai/OLMo-2-0325-32B}" --data "${DATA:-gsm8k_train.jsonl}" --num-examples 2000
  --segments 01110 --rank 64 --lora-alpha 128 --lr 5e-5 --bf16 --batch-size 4 --grad-accum 8
  --max-length 128 --gradient-checkpointing --output-dir "${OUT:-runs/olmo2-32b-midblock}"
)
