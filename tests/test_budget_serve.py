"""``budget='serve'`` and vLLM's rank advice, on the paper's rank table (/work/shared/paper-notes.md:
r=64 mid block -> 113 at L=16, 107 at L=32, 106 at L=40; r=8 at L=64 -> 13; one segment of L=16 -> 341).

vLLM accepts ``--max-lora-rank`` in ``MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]``
(vllm-project/vllm ``vllm/config/lora.py``)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from midblock_plugin.config import MidBlockConfig
from midblock_plugin.plan import build_plan
from midblock_plugin.serving import VLLM_MAX_LORA_RANKS, VLLM_MAX_LORA_RANKS_TEXT, serve_rank, vllm_max_lora_rank
from midblock_plugin.testing import tiny_config


# (L, baseline r, mask, matched rank of the paper, vLLM --max-lora-rank for it, budget='serve' rank)
PAPER_RANKS = [
    (16, 64, "01110", 113, 128, 64),
    (32, 64, "01110", 107, 128, 64),
    (40, 64, "01110", 106, 128, 64),
    (64, 8, "01110", 13, 16, 8),
    (16, 64, "01000", 341, 512, 320),
]


def test_vllm_sizes_are_vllms():
    assert VLLM_MAX_LORA_RANKS == (1, 8, 16, 32, 64, 128, 256, 320, 512)
    assert VLLM_MAX_LORA_RANKS_TEXT == "1, 8, 16, 32, 64, 128, 256, 320, 512"


def test_the_vllm_sizes_are_written_once():
    """serving.VLLM_MAX_LORA_RANKS is the only place shipped code types the list; the budget's help and the
    plan's warning format it."""
    root = Path(__file__).resolve().parents[1]
    typed = re.compile(r"1,\s*8,\s*16,\s*32,\s*64,\s*128,\s*256,\s*320,\s*512")
    found = {
        str(p.relative_to(root)): len(typed.findall(p.read_text()))
        for p in sorted((root / "midblock_plugin").rglob("*.py"))
    }
    assert {p: n for p, n in found.items() if n} == {"midblock_plugin/serving.py": 1}
    budget = next(f for f in dataclasses.fields(MidBlockConfig) if f.name == "budget")
    assert VLLM_MAX_LORA_RANKS_TEXT in budget.metadata["help"]
    low = build_plan(num_layers=16, config=MidBlockConfig(segments="01110", rank=4, budget="serve"))
    assert (low.matched_rank, low.layer_rank) == (7, 1)
    assert any(VLLM_MAX_LORA_RANKS_TEXT in w for w in low.warnings)


@pytest.mark.parametrize("num_layers, rank, mask, matched, padded, served", PAPER_RANKS)
def test_paper_rank_table(num_layers, rank, mask, matched, padded, served):
    match = build_plan(num_layers=num_layers, config=MidBlockConfig(segments=mask, rank=rank))
    serve = build_plan(num_layers=num_layers, config=MidBlockConfig(segments=mask, rank=rank, budget="serve"))
    assert match.layer_rank == matched == serve.matched_rank
    assert vllm_max_lora_rank(matched) == padded
    assert serve.layer_rank == serve_rank(matched) == served
    assert served in VLLM_MAX_LORA_RANKS and served <= matched
    assert serve.serving_cost()["max_lora_rank"] == served  # served without padding


def test_rank_edges():
    assert vllm_max_lora_rank(512) == 512 and vllm_max_lora_rank(513) is None
    assert serve_rank(1) == 1 and serve_rank(7) == 1 and serve_rank(1000) == 512
    with pytest.raises(ValueError, match="positive integer"):
        serve_rank(0)


def test_serve_plan_shows_params_and_serving_cost_vs_uniform():
    """L=16, r=64, mask 01110 on a model with shapes: the matched plan (113) is served at
    --max-lora-rank 128 on all 16 layers, 2x uniform r=64; the serve plan (64) costs the same
    as uniform and trains fewer parameters."""
    cfg = tiny_config("olmo2", num_layers=16)
    match = build_plan(cfg, MidBlockConfig(segments="01110", rank=64))
    serve = build_plan(cfg, MidBlockConfig(segments="01110", rank=64, budget="serve"))
    assert match.serving_cost()["ratio_to_uniform"] == pytest.approx(128 / 64)
    assert serve.serving_cost()["ratio_to_uniform"] == pytest.approx(1.0)
    assert serve.trainable_params * 113 == match.trainable_params * 64
    assert serve.trainable_params < serve.uniform_lora_params
    text = serve.summary()
    assert "budget 'serve': the largest vLLM rank <= the matched 113" in text
    assert "vLLM --max-lora-rank 64 (on every layer)" in text and "(ratio 1.000)" in text
    assert "vLLM --max-lora-rank 128" in match.summary() and "(ratio 2.000)" in match.summary()
    alpha = build_plan(cfg, MidBlockConfig(segments="01110", rank=64, budget="serve", lora_alpha=128)).lora_alpha
    assert alpha == 128  # ratio policy: alpha/r stays 2 at rank 64


def test_cli_plan_budget_serve_json(tmp_path, capsys):
    from midblock_plugin.cli import main
    from midblock_plugin.testing import save_tiny

    save_tiny(tmp_path / "m", "llama", num_layers=16)
    assert (
        main(["plan", str(tmp_path / "m"), "--segments", "01110", "--rank", "64", "--budget", "serve", "--json"]) == 0
    )
    text = capsys.readouterr().out
    out = json.loads(text[text.index("\n{") + 1 :] if not text.startswith("{") else text)  # past library log lines
    assert out["budget"] == "serve" and out["matched_rank"] == 113 and out["layer_rank"] == 64
    assert out["serving"]["max_lora_rank"] == 64 and out["serving"]["uniform_max_lora_rank"] == 64
    with pytest.raises(SystemExit) as bad:
        main(["plan", "--num-layers", "16", "--budget", "fast"])
    assert bad.value.code == 2 and "'serve'" in capsys.readouterr().err


def test_training_with_budget_serve_builds_adapters_at_the_served_rank():
    """The TRL entry point (``midblock_lora_config``) and PEFT: budget='serve' trains rank 8 (the
    vLLM size at or below the matched 13) on the window only."""
    from peft import get_peft_model

    from midblock_plugin.adapters import verify_trainable
    from midblock_plugin.integrations.trl import midblock_lora_config
    from midblock_plugin.testing import tiny_model

    model = tiny_model("llama", num_layers=5)
    config = MidBlockConfig(rank=8, budget="serve")
    peft_model = get_peft_model(model, midblock_lora_config(model, config))
    ranks = {p.shape[0] for n, p in peft_model.named_parameters() if "lora_A" in n}
    assert ranks == {8}
    verify_trainable(peft_model, build_plan(model, config))
