"""One vLLM engine in its own process, for tests/vllm: greedy tokens and their logprobs.

    python tests/vllm/engine_worker.py REQUEST.json RESULT.json

REQUEST: {"model": DIR, "max_lora_rank": R, "prompts": [[ids], ...], "max_tokens": N,
"runs": {"name": ADAPTER_DIR or null, ...}} (null: the base model alone). RESULT: {"name":
{"tokens": [[ids], ...], "logprobs": [[float], ...]}, "versions": {...}}. One engine serves every
run (max_loras=1, one LoRARequest per adapter), with the settings measured on the CPU: float32,
enforce_eager, a fixed 256 MiB KV cache, V1 multiprocessing off (the engine core would re-import this script), and no
prompt_logprobs (vLLM's CPU LoRA kernel crashes on them): generated tokens' logprobs instead.
"""

from __future__ import annotations

import json
import os
import sys


os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
#: a fixed KV cache: on the CPU, gpu_memory_utilization (default 0.9) is a fraction of the machine's
#: memory that must be free at start, which a shared machine rarely has
KV_CACHE_BYTES = 256 * 2**20


def main(request_path: str, result_path: str) -> None:
    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    request = json.loads(open(request_path).read())
    llm = LLM(
        model=request["model"],
        enable_lora=True,
        max_lora_rank=int(request["max_lora_rank"]),
        max_loras=1,
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        seed=0,
        kv_cache_memory_bytes=KV_CACHE_BYTES,
    )
    params = SamplingParams(temperature=0.0, max_tokens=int(request["max_tokens"]), ignore_eos=True, logprobs=1)
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in request["prompts"]]
    result: dict = {"versions": {"vllm": vllm.__version__, "torch": torch.__version__}}
    for lora_id, (name, adapter) in enumerate(request["runs"].items(), start=1):
        lora = LoRARequest(name, lora_id, adapter) if adapter else None
        outputs = llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
        tokens, logprobs = [], []
        for out in outputs:
            completion = out.outputs[0]
            tokens.append(list(completion.token_ids))
            logprobs.append([step[tok].logprob for tok, step in zip(completion.token_ids, completion.logprobs)])
        result[name] = {"tokens": tokens, "logprobs": logprobs}
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
