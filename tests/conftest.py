import os
import sys


# Nothing may reach a model or data hub during tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
# The real GSM8K lies in ../shared/data/gsm8k beside the checkout (read in place, never copied);
# the package itself only reads MIDBLOCK_GSM8K_DIR or an explicit --data-dir.
_SHARED_GSM8K = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "gsm8k"
)
if os.path.isdir(_SHARED_GSM8K):
    os.environ.setdefault("MIDBLOCK_GSM8K_DIR", os.path.normpath(_SHARED_GSM8K))
# DeepSpeed JIT-builds its CPU ops into ~/.cache/torch_extensions, shared by every environment;
# the Axolotl venv pins another DeepSpeed, whose build would then break ours. One dir per venv.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
