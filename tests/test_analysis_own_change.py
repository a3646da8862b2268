"""Two-model mode on real tiny models whose right answer is known: each layer's own change,
the recommendation it gives, ``tuned_variant`` and the refusal of window-tuned adapters."""

from __future__ import annotations

import json

import pytest
import torch

from midblock_plugin.analysis import AnalysisConfig, recommend_window, run_analysis
from midblock_plugin.analysis.run import adapter_trained_layers, pair_signal
from midblock_plugin.architecture import find_decoder_layers
from midblock_plugin.cli import main
from midblock_plugin.testing import save_tiny, tiny_model
from midblock_plugin.window import resolve_layers


L = 10
CHANGED = [3, 4, 5]
KW = dict(num_prompts=12, max_length=32, batch_size=4, progress=False, early_exit=False)


def _lora(layers=None, seed=0):
    from peft import LoraConfig, get_peft_model

    kw = {"layers_to_transform": layers, "layers_pattern": "layers"} if layers is not None else {}
    return get_peft_model(
        tiny_model("llama", num_layers=L, seed=seed),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], **kw),
    )


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_change")
    base = save_tiny(root / "base", arch="llama", num_layers=L)
    tuned = tiny_model("llama", num_layers=L)
    _, stack = find_decoder_layers(tuned)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a "fine-tune" that changed only layers 3-5
        for i in CHANGED:
            for p in stack[i].parameters():
                p.add_(0.3 * p.std() * torch.randn(p.shape, generator=g))
    tuned.save_pretrained(root / "layers3to5")
    # a uniform (every-layer) adapter whose update is non-zero only on layers 3-5
    uniform = _lora()
    with torch.no_grad():
        for name, p in uniform.named_parameters():
            if "lora_B" in name and any(f"layers.{i}." in name for i in CHANGED):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    uniform.save_pretrained(root / "uniform")
    uniform.merge_and_unload().save_pretrained(root / "uniform_merged")
    window = _lora(layers=[2, 3, 4, 5, 6, 7])  # a window-tuned (01110-like) adapter
    window.save_pretrained(root / "window")
    return {k: str(root / k) for k in ("layers3to5", "uniform", "uniform_merged", "window")} | {"base": str(base)}


@pytest.fixture(scope="module")
def full(dirs):
    return run_analysis(AnalysisConfig(base=dirs["base"], tuned=dirs["layers3to5"], **KW))


def test_own_change_finds_exactly_the_changed_layers_where_inherited_change_spreads_up(full):
    own = full.column("own_change")
    assert all(own[i] > 0.05 for i in CHANGED)
    assert all(own[i] == 0.0 for i in range(L) if i not in CHANGED)  # ~0 above layer 5 (and below 3)
    rec = full.recommendation
    assert rec.layers == CHANGED and rec.signal_name == "own_output" and rec.fallback is None
    assert rec.captured_share == 1.0
    # the old, inherited signal sees the change passed up to every layer above 5 ...
    inherited = pair_signal(full.rows, "inherited_cka")
    assert all(inherited[i] > 1e-3 for i in range(CHANGED[0], L))
    # ... and its window leaves the changed layers for the ones above them
    old = recommend_window(inherited, signal_name="inherited_cka")
    assert max(old.layers) > max(CHANGED)


def test_the_json_records_tuned_variant_and_recommended_layers_and_plan_reads_it(full, tmp_path):
    doc = full.to_dict()
    assert doc["schema"] == "midblock.analysis/2"
    assert doc["tuned_variant"] == "full" and doc["tuned_layers"] is None
    assert doc["recommended_layers"] == CHANGED == doc["recommendation"]["layers"]
    assert doc["settings"]["signal"] == "own_output" and "own_change" in doc["columns"]
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps(doc))
    assert resolve_layers(L, window_from=str(path)) == CHANGED


def test_the_weight_signal_is_selectable_and_recorded(dirs):
    res = run_analysis(AnalysisConfig(base=dirs["base"], tuned=dirs["layers3to5"], signal="weight", **KW))
    assert res.recommendation.signal_name == "weight" and res.to_dict()["settings"]["signal"] == "weight"
    assert res.recommendation.layers == CHANGED


def test_uniform_adapter_is_analysed_and_matches_its_merged_model(dirs):
    ad = run_analysis(AnalysisConfig(base=dirs["base"], tuned=dirs["uniform"], tuned_variant="11111", **KW))
    merged = run_analysis(AnalysisConfig(base=dirs["base"], tuned=dirs["uniform_merged"], **KW))
    assert ad.tuned_variant == "11111" and ad.tuned_layers is None
    own_ad, own_m = ad.column("own_change"), merged.column("own_change")
    for i in range(L):
        assert own_ad[i] == pytest.approx(own_m[i], rel=1e-3, abs=1e-6), i
    assert ad.recommendation.layers == CHANGED == merged.recommendation.layers
    assert all(own_ad[i] == 0.0 for i in range(L) if i not in CHANGED)


def test_detected_variant_of_a_uniform_adapter_is_11111(dirs):
    cfg = AnalysisConfig(base=dirs["base"], tuned=dirs["uniform"], **KW)
    assert cfg.detected_variant == "11111" and cfg.window_tuned is None
    assert adapter_trained_layers(dirs["uniform"], L) == list(range(L))
    assert adapter_trained_layers(dirs["window"], L) == [2, 3, 4, 5, 6, 7]


def test_a_window_tuned_adapter_gets_metrics_but_no_recommendation(dirs, capsys):
    cfg = AnalysisConfig(base=dirs["base"], tuned=dirs["window"], **KW)
    assert cfg.tuned_layers == [2, 3, 4, 5, 6, 7] and "circular" in cfg.window_tuned
    res = run_analysis(cfg)
    rec = res.recommendation
    assert rec.layers == [] and "trains only layers 2-7" in rec.refused and "11111" in rec.refused
    assert "no window is recommended" in capsys.readouterr().err
    doc = res.to_dict()
    assert doc["recommended_layers"] == [] and doc["tuned_layers"] == [2, 3, 4, 5, 6, 7]
    assert doc["tuned_variant"] == "01110"  # layers 2-7 of 10 are exactly the mid block
    assert all(r["own_change"] is not None for r in doc["layers"])  # the metrics are still there


def test_declared_variants(dirs):
    with pytest.raises(ValueError, match=r"tuned-variant='11111'.*trains only layers 2-7 \(01110\)"):
        AnalysisConfig(base=dirs["base"], tuned=dirs["window"], tuned_variant="11111", **KW)
    with pytest.raises(ValueError, match="every layer"):
        AnalysisConfig(base=dirs["base"], tuned=dirs["uniform"], tuned_variant="01110", **KW)
    declared = AnalysisConfig(base=dirs["base"], tuned=dirs["layers3to5"], tuned_variant="01110", **KW)
    assert "window-tuned" in declared.window_tuned
    assert AnalysisConfig(base=dirs["base"], tuned=dirs["layers3to5"], tuned_variant="full", **KW).window_tuned is None


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(signal="cka"), "--signal='cka'"),
        (dict(signal="weight", weight_stats=False), "--signal=weight needs"),
        (dict(min_objective=1.0), "--min-objective=1.0"),
        (dict(tuned_variant=" "), "--tuned-variant=' '"),
        (dict(probe_batches=0), "--probe-batches=0"),
    ],
)
def test_bad_settings_are_refused(dirs, kw, needle):
    with pytest.raises(ValueError) as err:
        AnalysisConfig(base=dirs["base"], tuned=dirs["layers3to5"], **{**KW, **kw})
    assert needle in str(err.value)


def test_cli_refuses_to_recommend_from_a_window_tuned_adapter(dirs, tmp_path, capsys):
    out = tmp_path / "w"
    rc = main(
        [
            "analyze",
            dirs["base"],
            dirs["window"],
            "--output-dir",
            str(out),
            "--quiet",
            "--no-figure",
            "--num-prompts",
            "8",
            "--max-length",
            "24",
            "--no-early-exit",
        ]
    )
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "NO WINDOW RECOMMENDED" in stdout and "--window-from" not in stdout
    doc = json.loads((out / "analysis.json").read_text())
    assert doc["recommendation"]["refused"] and doc["recommended_layers"] == []
