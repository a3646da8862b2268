"""The compiled llama.cpp check, driven by scripts/check-llamacpp.sh (read it first).

    python scripts/check_llamacpp.py --converter DIR --llama-python PY --work DIR [--model DIR]

With the main environment's python: an rsLoRA ``01110`` adapter (random lora_B) on a real-tokenizer
model (SmolLM2-135M-Instruct; llama.cpp's converter refuses tokenizers it does not know, which rules
out the tiny test tokenizer), its ``midblock export --target llama.cpp``, both converted with
llama.cpp's own converters (f32), then the logits of every prompt position computed by llama.cpp
(``PY``, an environment with the compiled ``llama_cpp``: ``--llama-logits`` mode) and by HF + PEFT.
Prints and writes WORK/check-llamacpp.json: max |logit difference| of base, the export and the
original rsLoRA adapter (the trap), and whether the greedy next tokens agree.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path


PROMPTS = [
    "Question: Natalia sold clips to 48 of her friends in April. How many clips did she sell?\nAnswer:",
    "The capital of France is",
    "def fibonacci(n):",
]


def llama_logits(request: str, result: str) -> None:
    """In the llama.cpp environment: logits at every prompt position for each (model, lora) run."""
    import llama_cpp
    import numpy as np

    req = json.loads(Path(request).read_text())
    out = {"llama_cpp_python": llama_cpp.__version__, "runs": {}}
    for name, lora in req["runs"].items():
        llm = llama_cpp.Llama(
            model_path=req["model"], lora_path=lora, n_ctx=256, logits_all=True, n_threads=2, verbose=False, seed=0
        )
        rows = []
        for ids in req["prompts"]:
            llm.reset()
            llm.eval(ids)
            rows.append(np.asarray(llm.scores[: len(ids)], dtype=np.float64).tolist())
        out["runs"][name] = rows
        del llm
    Path(result).write_text(json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--converter", required=True)
    ap.add_argument("--llama-python", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/midblock/SmolLM2-135M-Instruct"))
    ap.add_argument("--llama-logits", nargs=2, metavar=("REQUEST", "RESULT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.llama_logits:
        llama_logits(*args.llama_logits)
        return 0

    import torch
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from midblock_plugin.config import MidBlockConfig
    from midblock_plugin.plan import build_plan

    work, conv, model_dir = Path(args.work), Path(args.converter), Path(args.model)
    work.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    plan = build_plan(model, MidBlockConfig(segments="01110", rank=8, use_rslora=True, lora_dropout=0.0))
    peft_model = get_peft_model(model, plan.lora_config())
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    peft_model.save_pretrained(work / "original")
    run = lambda cmd: subprocess.run(cmd, check=True)  # noqa: E731
    run(
        [
            sys.executable,
            "-m",
            "midblock_plugin.cli",
            "export",
            str(work / "original"),
            "--target",
            "llama.cpp",
            "--base",
            str(model_dir),
            "--output",
            str(work / "export"),
            "--overwrite",
        ]
    )
    run(
        [
            sys.executable,
            str(conv / "convert_hf_to_gguf.py"),
            "--outtype",
            "f32",
            "--outfile",
            str(work / "base.gguf"),
            str(model_dir),
        ]
    )
    for name in ("original", "export"):
        run(
            [
                sys.executable,
                str(conv / "convert_lora_to_gguf.py"),
                "--base",
                str(model_dir),
                "--outtype",
                "f32",
                "--outfile",
                str(work / f"{name}.gguf"),
                str(work / name),
            ]
        )

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    request = {
        "model": str(work / "base.gguf"),
        "prompts": prompts,
        "runs": {"base": None, "export": str(work / "export.gguf"), "original": str(work / "original.gguf")},
    }
    (work / "request.json").write_text(json.dumps(request))
    run(
        [
            args.llama_python,
            __file__,
            "--converter",
            str(conv),
            "--llama-python",
            args.llama_python,
            "--work",
            str(work),
            "--llama-logits",
            str(work / "request.json"),
            str(work / "result.json"),
        ]
    )
    got = json.loads((work / "result.json").read_text())

    def hf_logits(adapter):
        m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if adapter:
            m = PeftModel.from_pretrained(m, str(adapter))
        with torch.no_grad():
            return [m(input_ids=torch.tensor([ids])).logits[0].double() for ids in prompts]

    reference = {"base": hf_logits(None), "adapter": hf_logits(work / "original")}
    report = {
        "model": str(model_dir),
        "layers": plan.layers,
        "rank": plan.layer_rank,
        "use_rslora": True,
        "llama_cpp_python": got["llama_cpp_python"],
        "runs": {},
    }
    for name, ref_name in (("base", "base"), ("export", "adapter"), ("original", "adapter")):
        diffs, same_next = [], []
        for ref, rows in zip(reference[ref_name], got["runs"][name]):
            mine = torch.tensor(rows, dtype=torch.float64)
            diffs.append(float((mine - ref).abs().max()))
            same_next.append(bool((mine.argmax(-1) == ref.argmax(-1)).all()))
        report["runs"][name] = {
            "max_abs_logit_diff": max(diffs),
            "argmax_equal_every_position": all(same_next),
            "against": "HF" if ref_name == "base" else "HF + PEFT (original rsLoRA adapter)",
        }
    report["adapter_effect_max_logit"] = max(
        float((a - b).abs().max()) for a, b in zip(reference["adapter"], reference["base"])
    )
    report["sqrt_r"] = math.sqrt(plan.layer_rank)
    (work / "check-llamacpp.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    # llama.cpp's f32 kernels differ from torch's by ~0.02 in the logits of the base model alone (no
    # adapter), so the export is held to that floor: within twice the base model's own difference,
    # within 5% of what the adapter moves, and the same greedy token at every position.
    export, base = report["runs"]["export"]["max_abs_logit_diff"], report["runs"]["base"]["max_abs_logit_diff"]
    report["criterion"] = "export diff <= max(2 * base diff, 0.01) and < 5% of the adapter effect, same argmax"
    ok = (
        export <= max(2 * base, 1e-2)
        and export < 0.05 * report["adapter_effect_max_logit"]
        and report["runs"]["export"]["argmax_equal_every_position"]
    )
    report["ok"] = ok
    (work / "check-llamacpp.json").write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
