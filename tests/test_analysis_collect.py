"""``run_analysis`` on real tiny models: analytic properties end to end, adapters, streaming."""

from __future__ import annotations

import math

import pytest
import torch

from midblock_plugin.analysis import AnalysisConfig, LayerCollector, run_analysis
from midblock_plugin.analysis.collect import Readout, backbone_and_readout
from midblock_plugin.analysis.metrics import curvature, dataset_entropy, effective_rank, linear_cka, prompt_entropy
from midblock_plugin.analysis.prompts import BUILTIN_PROMPTS
from midblock_plugin.architecture import find_decoder_layers
from midblock_plugin.testing import GSM8K_DIR, save_tiny, tiny_model, tiny_tokenizer
from midblock_plugin.window import resolve_layers


L = 6
N = 12
KW = dict(num_prompts=N, max_length=32, batch_size=5, progress=False)


def _perturb(model, layers, scale=0.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    _, stack = find_decoder_layers(model)
    with torch.no_grad():
        for i in layers:
            for p in stack[i].parameters():
                p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("analysis_models")
    out = {"base": save_tiny(root / "base", arch="llama", num_layers=L)}
    tiny_model("llama", num_layers=L).save_pretrained(root / "same")
    _perturb(tiny_model("llama", num_layers=L), [3]).save_pretrained(root / "layer3")
    out["same"], out["layer3"] = root / "same", root / "layer3"
    peft_model = get_peft_model(
        tiny_model("llama", num_layers=L),
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj"],
            layers_to_transform=[2, 4],
            layers_pattern="layers",
            init_lora_weights=False,
        ),
    )
    peft_model.save_pretrained(root / "adapter")
    peft_model.merge_and_unload().save_pretrained(root / "merged")
    out["adapter"], out["merged"] = root / "adapter", root / "merged"
    return {k: str(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def identical(dirs):
    return run_analysis(AnalysisConfig(base=dirs["base"], tuned=dirs["same"], **KW))


def test_identical_models_give_cka_one_cosine_one_shift_zero_weight_change_zero(identical):
    assert identical.mode == "pair" and identical.tuned_kind == "model" and identical.num_layers == L
    for row in identical.rows:
        assert row["cka"] == pytest.approx(1.0, abs=1e-9)
        assert row["cosine"] == pytest.approx(1.0, abs=1e-6)
        assert row["mean_shift"] == pytest.approx(0.0, abs=1e-9)
        assert row["weight_change"] == 0.0 and row["weight_change_attn"] == 0.0 and row["weight_change_mlp"] == 0.0
        assert row["early_exit_cross"] == 1.0
        for metric in ("effective_rank", "dataset_entropy", "prompt_entropy", "curvature", "early_exit"):
            assert row[f"{metric}_base"] == pytest.approx(row[f"{metric}_tuned"], abs=1e-9)
    assert identical.rows[-1]["early_exit_base"] == 1.0  # the last layer's readout is the prediction
    rec = identical.recommendation
    assert rec.fallback and rec.layers == resolve_layers(L)


def test_perturbing_only_layer_j_leaves_layers_below_untouched(dirs, identical):
    res = run_analysis(AnalysisConfig(base=dirs["base"], tuned=dirs["layer3"], **KW))
    for i in range(3):
        for key, value in identical.rows[i].items():
            if key == "early_exit_tuned":  # measured against the tuned model's final (top) layer
                continue
            assert res.rows[i][key] == pytest.approx(value, abs=1e-9), (i, key)
    for i in range(3, L):
        assert res.rows[i]["cka"] < 1 - 1e-4
        assert res.rows[i]["mean_shift"] > 1e-4
        assert res.rows[i]["early_exit_cross"] < 1.0
    changed = [i for i, r in enumerate(res.rows) if r["weight_change"] > 0]
    assert changed == [3]
    assert res.rows[3]["weight_change_attn"] > 0 and res.rows[3]["weight_change_mlp"] > 0
    # base-model metrics do not depend on the tuned model
    for a, b in zip(identical.rows, res.rows):
        assert a["effective_rank_base"] == pytest.approx(b["effective_rank_base"], abs=1e-12)


def test_adapter_path_matches_the_merged_full_model(dirs):
    ad = run_analysis(AnalysisConfig(base=dirs["base"], tuned=dirs["adapter"], **KW))
    full = run_analysis(AnalysisConfig(base=dirs["base"], tuned=dirs["merged"], **KW))
    assert ad.tuned_kind == "adapter" and full.tuned_kind == "model"
    for ra, rf in zip(ad.rows, full.rows):
        for key in (
            "cka",
            "cosine",
            "mean_shift",
            "weight_change_attn",
            "weight_change",
            "early_exit_cross",
            "effective_rank_tuned",
            "prompt_entropy_tuned",
        ):
            assert ra[key] == pytest.approx(rf[key], rel=1e-3, abs=1e-5), (ra["layer"], key)
    assert [i for i, r in enumerate(ad.rows) if r["weight_change_attn"] > 0] == [2, 4]
    assert all(r["weight_change_mlp"] == 0.0 for r in ad.rows)  # only q_proj / v_proj adapted
    assert all(r["cka"] == pytest.approx(1.0, abs=1e-9) for r in ad.rows[:2])
    assert all(r["cka"] < 1 - 1e-4 for r in ad.rows[2:])


def test_streamed_metrics_equal_reference_on_output_hidden_states(dirs):
    """Pool each prompt alone from output_hidden_states and compare with the batched, hooked run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = run_analysis(AnalysisConfig(base=dirs["base"], tuned=dirs["layer3"], **KW))
    tok = AutoTokenizer.from_pretrained(dirs["base"])
    models = [AutoModelForCausalLM.from_pretrained(dirs[k]).eval() for k in ("base", "layer3")]
    pooled = [[[] for _ in range(L)] for _ in models]
    token_metrics = [[[] for _ in range(L)] for _ in models]
    with torch.no_grad():
        for text in BUILTIN_PROMPTS[:N]:
            enc = tok(text, truncation=True, max_length=32, return_tensors="pt")
            for m_idx, model in enumerate(models):
                hs = model(**enc, output_hidden_states=True).hidden_states
                for layer in range(L - 1):  # hidden_states[L] has the final norm applied
                    h = hs[layer + 1]
                    pooled[m_idx][layer].append(h[0].mean(0))
                    token_metrics[m_idx][layer].append(
                        (prompt_entropy(h, enc["attention_mask"]).item(), curvature(h, enc["attention_mask"]).item())
                    )
    for layer in range(L - 1):
        xb, xt = torch.stack(pooled[0][layer]), torch.stack(pooled[1][layer])
        row = res.rows[layer]
        assert row["cka"] == pytest.approx(linear_cka(xb, xt), abs=1e-5)
        assert row["effective_rank_base"] == pytest.approx(effective_rank(xb, normalize=True), rel=1e-4)
        assert row["dataset_entropy_tuned"] == pytest.approx(dataset_entropy(xt), rel=1e-4)
        pe = [v for v, _ in token_metrics[0][layer] if not math.isnan(v)]
        cv = [v for _, v in token_metrics[1][layer] if not math.isnan(v)]
        assert row["prompt_entropy_base"] == pytest.approx(sum(pe) / len(pe), rel=1e-4)
        assert row["curvature_tuned"] == pytest.approx(sum(cv) / len(cv), rel=1e-4)


def test_early_exit_readout_at_last_layer_is_the_models_prediction():
    model = tiny_model("llama", num_layers=3).eval()
    tok = tiny_tokenizer()
    enc = tok(["Question: 2 + 3 =", "The quick brown fox"], padding=True, return_tensors="pt")
    _, stack = find_decoder_layers(model)
    _, norm, head, _ = backbone_and_readout(model)
    captured = {}
    handle = stack[-1].register_forward_hook(lambda mod, a, out: captured.setdefault("h", out))
    with torch.no_grad():
        logits = model(**enc).logits
    handle.remove()
    mask = enc["attention_mask"].bool()
    top1 = Readout(norm, head, chunk=3).top1(captured["h"], mask)
    assert torch.equal(top1, logits.argmax(-1)[mask])


def test_collector_memory_does_not_grow_with_prompts():
    model = tiny_model("llama", num_layers=3).eval()
    tok = tiny_tokenizer()
    backbone, norm, head, _ = backbone_and_readout(model)
    _, stack = find_decoder_layers(model)

    def run(n):
        col = LayerCollector(
            3,
            64,
            pair=False,
            stats_dtype=torch.float64,
            device=torch.device("cpu"),
            readouts={"base": Readout(norm, head)},
        )
        col.attach(stack)
        texts = [BUILTIN_PROMPTS[i % len(BUILTIN_PROMPTS)] for i in range(n)]
        with torch.no_grad():
            for start in range(0, n, 4):
                enc = tok(texts[start : start + 4], padding=True, return_tensors="pt")
                col.begin_batch(enc["attention_mask"])
                with col.pass_of("base"):
                    backbone(**enc)
                col.end_batch()
        col.detach()
        tensors = [t for m in col.stats["base"].moments for t in (m.sum, m.gram, m.norm_gram, m.shift)]
        tensors += [c.cross for c in col.cross]
        return col, sum(t.numel() for t in tensors)

    small, size_small = run(4)
    large, size_large = run(40)
    assert size_small == size_large
    assert large.stats["base"].moments[0].n == 40 and small.stats["base"].moments[0].n == 4
    assert not stack[0]._forward_hooks  # detach removed the hooks


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "qwen2"])
def test_other_architectures_single_and_pair(arch, tmp_path):
    base = save_tiny(tmp_path / arch, arch=arch, num_layers=4)
    single = run_analysis(AnalysisConfig(base=str(base), **KW))
    assert single.mode == "single" and single.num_layers == 4
    assert single.rows[-1]["early_exit"] == 1.0
    for row in single.rows:
        for key in ("adjacent_cka", "effective_rank", "dataset_entropy", "prompt_entropy", "snr_attn", "snr_mlp"):
            assert row[key] is not None and math.isfinite(row[key]), (arch, key)
        assert 0 < row["effective_rank"] <= 1 and 0 <= row["dataset_entropy"] <= 1 + 1e-9
    pair = run_analysis(AnalysisConfig(base=str(base), tuned=str(base), early_exit=False, **KW))
    assert all(r["cka"] == pytest.approx(1.0, abs=1e-9) and r["weight_change"] == 0.0 for r in pair.rows)
    assert "early_exit_cross" not in pair.columns


def test_bfloat16_models(dirs):
    res = run_analysis(AnalysisConfig(base=dirs["base"], tuned=dirs["layer3"], dtype="bfloat16", **KW))
    assert res.settings["dtype"] == "bfloat16"
    assert all(r["cka"] == pytest.approx(1.0, abs=1e-6) for r in res.rows[:3])
    assert all(r["cka"] < 0.9999 for r in res.rows[3:])
    assert all(v is None or math.isfinite(v) for r in res.rows for v in r.values())


@pytest.mark.skipif(not (GSM8K_DIR / "test.jsonl").exists(), reason="shared GSM8K data not present")
def test_gsm8k_prompts(dirs):
    res = run_analysis(AnalysisConfig(base=dirs["base"], prompts="gsm8k", **{**KW, "num_prompts": 6}))
    assert res.prompts["count"] == 6 and res.prompts["source"] == "gsm8k" and res.prompts["split"] == "test"
    assert res.prompts["tokens"] >= 6 * 10


def test_jsonl_text_and_chat_rows(dirs, tmp_path):
    import json

    path = tmp_path / "p.jsonl"
    rows = [
        {"text": "Hello there, how are you?"},
        {"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]},
        {"text": "Another line of text."},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    res = run_analysis(AnalysisConfig(base=dirs["base"], prompts=str(path), **KW))
    assert res.prompts["count"] == 3
    tok = tiny_tokenizer()
    chat = tok.apply_chat_template(rows[1]["messages"], tokenize=False)
    expected = sum(min(32, len(tok(t)["input_ids"])) for t in (rows[0]["text"], chat, rows[2]["text"]))
    assert res.prompts["tokens"] == expected
