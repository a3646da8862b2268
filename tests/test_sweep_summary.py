"""The sweep's summary on synthetic per-seed records (no training, numpy only): each variant at the rate
its validation loss picks, Holm-corrected comparisons with uniform, KL at uniform's task gain, and the
options that drive them (``--lrs``, ``--variants recommended`` with ``--window-from``)."""

import json

import pytest

from midblock_plugin.experiments.options import JobOptions
from midblock_plugin.experiments.record import METRICS, SeedRecord
from midblock_plugin.experiments.summary import summarise


ROWS, BLOCKS = 8, 4
TOKENS = [10] * ROWS
BASE = {
    "variant": "base (no tuning)",
    "heldout_loss": 3.0,
    "heldout_row_loss": [30.0] * ROWS,
    "heldout_row_tokens": TOKENS,
    "general_text": {"source": "text", "blocks": BLOCKS, "block_tokens": 16, "loss": 4.0},
}


def _rec(variant, seed, lr, heldout, validation, kl, jitter=0.0):
    """A record whose per-token held-out loss is ``heldout`` (+ a small per-row, per-seed jitter)."""
    rows = [(heldout + jitter * ((i * 7 + seed) % 5 - 2) / 100) * 10 for i in range(ROWS)]
    return SeedRecord(
        variant=variant,
        seed=seed,
        lr=lr,
        layers=[0, 1],
        window="0-1",
        rank=16,
        lora_alpha=32.0,
        trainable_params=10,
        uniform_lora_params=10,
        steps=1,
        step_time_s=0.1,
        peak_memory_bytes=1,
        peak_memory_kind="process_rss",
        heldout_row_loss=rows,
        heldout_row_tokens=TOKENS,
        validation_row_loss=[validation * 10] * ROWS,
        validation_row_tokens=TOKENS,
        general_delta_loss=[0.01 * kl] * BLOCKS,
        general_kl=[kl + 0.0001 * ((seed + b) % 3) for b in range(BLOCKS)],
    )


def _records(seeds=(42, 43, 44), lrs=(1e-4, 1e-3)):
    recs = []
    for s in seeds:
        for lr in lrs:
            big = lr == max(lrs)
            # uniform: gains 0.5 (small lr) / 1.0 (big lr), validation prefers the big lr
            recs.append(
                _rec("11111", s, lr, 2.0 if big else 2.5, 2.1 if big else 2.6, 0.02 if big else 0.01, jitter=1)
            )
            # the window: held-out prefers the SMALL lr, validation the BIG one -> the big one must be chosen;
            # its gains 0.4 / 1.2 bracket uniform's 1.0: KL at that gain = 0.01 + (0.6/0.8) * 0.02 = 0.025
            recs.append(
                _rec("01110", s, lr, 1.8 if big else 2.6, 2.0 if big else 2.9, 0.03 if big else 0.01, jitter=2)
            )
            # a window far worse than uniform everywhere (gain never reaches uniform's): KL at gain is None
            recs.append(_rec("00001", s, lr, 2.9 if big else 2.95, 2.9 if big else 2.95, 0.001, jitter=1))
    return recs


def test_each_variant_at_the_rate_its_validation_loss_picks():
    entries = {e["mask"]: e for e in summarise(_records(), BASE, ("11111", "01110", "00001"))}
    assert entries["11111"]["best_lr"] == 1e-3 and entries["01110"]["best_lr"] == 1e-3
    mid = entries["01110"]
    assert [b["lr"] for b in mid["by_lr"]] == [1e-4, 1e-3]
    assert set(mid["by_lr"][0]) >= {"lr", "heldout_loss", "validation_loss"}
    assert mid["by_lr"][1]["validation_loss"] == pytest.approx(2.0)
    assert mid["heldout_loss"]["mean"] == pytest.approx(1.8, abs=0.01)  # reported at the chosen rate
    # the chosen rate ignores the held-out rows: make the small lr best on held-out only, the choice stays
    recs = _records()
    for r in recs:
        if r.variant == "01110" and r.lr == 1e-4:
            r.heldout_row_loss = [x - 10.0 for x in r.heldout_row_loss]
    again = {e["mask"]: e for e in summarise(recs, BASE, ("11111", "01110", "00001"))}
    assert again["01110"]["best_lr"] == 1e-3
    assert len(mid["runs"]) == 6 and {r["lr"] for r in mid["runs"]} == {1e-4, 1e-3}


def test_holm_over_the_comparisons_with_uniform():
    entries = summarise(_records(), BASE, ("11111", "01110", "00001"))
    for m in METRICS:
        comps = []
        for e in entries:
            where = e if m.group is None else e[m.group]
            d = where[m.vs_uniform]
            assert {"mean_diff", "ci95", "p_value", "p_holm", "significant"} <= set(d), m.name
            if e["mask"] == "11111":
                assert d["reference"] and d["p_value"] is None and d["significant"] is False
                continue
            assert d["significant"] == (d["p_holm"] is not None and d["p_holm"] < 0.05)
            assert d["p_holm"] >= d["p_value"]
            comps.append(d)
        ps = sorted(c["p_value"] for c in comps)
        # Holm with 2 tests: the smallest p is doubled
        assert min(c["p_holm"] for c in comps) == pytest.approx(min(1.0, 2 * ps[0]))
    mid, far = entries[1], entries[2]
    assert mid["vs_uniform"]["mean_diff"] == pytest.approx(-0.2, abs=0.01) and mid["vs_uniform"]["significant"]
    assert far["vs_uniform"]["mean_diff"] > 0 and far["vs_uniform"]["significant"]


def test_kl_at_uniform_gain():
    entries = {e["mask"]: e for e in summarise(_records(), BASE, ("11111", "01110", "00001"))}
    mid = entries["01110"]["forgetting"]["kl_at_uniform_gain"]
    assert len(mid["per_seed"]) == 3 and mid["missing"] == 0
    assert mid["mean"] == pytest.approx(0.025 + 0.0001, abs=2e-4)
    assert mid["ci95"] is not None and mid["ci95"][0] <= mid["mean"] <= mid["ci95"][1]
    assert mid["vs_uniform"]["mean"] > 0 and mid["lower_in_every_seed"] is False
    far = entries["00001"]["forgetting"]
    assert far["kl_at_uniform_gain"]["per_seed"] == [None] * 3 and far["kl_at_uniform_gain"]["mean"] is None
    assert "outside" in far["kl_at_uniform_gain_note"]
    one = summarise(_records(lrs=(1e-3,)), BASE, ("11111", "01110"))
    assert one[1]["forgetting"]["kl_at_uniform_gain"] is None
    assert "one learning rate" in one[1]["forgetting"]["kl_at_uniform_gain_note"]
    assert one[1]["best_lr"] == 1e-3 and one[1]["best_lr_rule"] == "the only learning rate"


def test_below_three_seeds_there_is_no_interval_and_nothing_is_significant():
    for seeds in ((42,), (42, 43)):
        entries = summarise(_records(seeds=seeds), BASE, ("11111", "01110"))
        d = entries[1]["vs_uniform"]
        assert d["ci95"] is None and d["p_value"] is None and d["p_holm"] is None and d["significant"] is False
        assert entries[1]["heldout_loss"]["ci95"] is None


def test_gsm8k_paired_per_question_against_uniform():
    recs = [r for r in _records() if r.variant in ("11111", "01110")]
    for r in recs:
        right = 6 if r.variant == "01110" else 2
        r.gsm8k_correct = {"strict-match": [1] * right + [0] * (8 - right)}
        r.eval = {
            "n_samples": 8,
            "num_fewshot": 0,
            "limit": 8,
            "strict-match": {"exact_match": right / 8, "stderr": 0.1},
        }
    uni, mid = summarise(recs, BASE, ("11111", "01110"))
    g = mid["gsm8k"]["strict-match"]
    assert g["exact_match"] == 0.75 and g["n"] == 8 and g["seeds"] == 3
    d = g["vs_uniform"]
    assert d["mean_diff"] == pytest.approx(0.5) and d["p_value"] is not None
    assert d["significant"] == (d["p_holm"] < 0.05)
    assert uni["gsm8k"]["strict-match"]["vs_uniform"]["reference"]


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    "bad, says",
    [
        ("", "empty"),
        ("0,1e-3", "'0' is not a learning rate"),
        ("-1e-4", "is not a learning rate"),
        ("1e-3,1e-3", "more than once"),
        ("abc", "is not a number"),
        ("1e-3,,1e-4", "empty entry"),
    ],
)
def test_bad_lrs_are_refused_naming_the_flag(tmp_path, bad, says):
    with pytest.raises(ValueError, match="--lrs") as exc:
        JobOptions(output_dir=str(tmp_path), lrs=bad)
    assert says in str(exc.value)


def test_lrs_resolve_and_the_recommended_variant_needs_window_from(tmp_path):
    opts = JobOptions(output_dir=str(tmp_path), preset="cpu", lrs="2.5e-4,1e-3").resolved()
    assert opts.lr_list() == [2.5e-4, 1e-3] and opts.validation == 64
    assert JobOptions(output_dir=str(tmp_path), preset="cpu").resolved().lr_list() == [5e-4]  # the preset's rate
    with pytest.raises(ValueError, match="--window-from"):
        JobOptions(output_dir=str(tmp_path), variants="recommended,11111")
    with pytest.raises(ValueError, match="only the variant 'recommended'"):
        JobOptions(output_dir=str(tmp_path), variants="11111", window_from=str(tmp_path / "a.json"))
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps({"recommendation": {"layers": [3, 4, 5], "num_layers": 10}}))
    opts = JobOptions(output_dir=str(tmp_path), variants="recommended,11111", window_from=str(path))
    assert opts.variants == ("recommended", "11111") and opts.midblock_config("recommended").window_from == str(path)
    path.write_text(json.dumps({"recommendation": {"layers": [], "refused": "window-tuned"}}))
    with pytest.raises(ValueError, match="--window-from '.*': recommends no window: window-tuned"):
        JobOptions(output_dir=str(tmp_path), variants="recommended,11111", window_from=str(path))


def test_validation_rows_are_training_rows_never_trained_on_and_not_test_rows(tmp_path):
    from midblock_plugin.data import gsm8k
    from midblock_plugin.experiments.jobs import _load_data

    opts = JobOptions(
        output_dir=str(tmp_path),
        preset="cpu",
        lrs="1e-4,1e-3",
        num_examples=192,
        validation=64,
        shuffle_seed=42,
        heldout=128,
    ).resolved()
    data = _load_data(opts, log=lambda *_: None)
    train_file, test_file, _ = gsm8k.load(None, lambda *_: None)
    trained = {r["question"] for r in data.train[:192]}
    val = {r["question"] for r in data.validation}
    held = {r["question"] for r in data.heldout}
    assert len(val) == 64 and not val & trained and not val & held
    assert [train_file[i]["question"] for i in data.ids["validation"]] == [r["question"] for r in data.validation]
    assert [test_file[i]["question"] for i in data.ids["heldout"]] == [r["question"] for r in data.heldout]
    assert not set(data.ids["validation"]) & set(data.ids["training"])
    assert _load_data(opts, log=lambda *_: None).ids == data.ids  # deterministic
    single = _load_data(JobOptions(output_dir=str(tmp_path), preset="cpu").resolved(), log=lambda *_: None)
    assert single.validation is None  # one rate: nothing to choose, no validation rows
    too_many = JobOptions(
        output_dir=str(tmp_path), preset="cpu", lrs="1e-4,1e-3", num_examples=len(train_file) - 10, validation=64
    ).resolved()
    with pytest.raises(ValueError, match="--validation 64"):
        _load_data(too_many, log=lambda *_: None)


def test_a_negative_rate_on_the_command_line_reaches_the_lrs_check(capsys):
    """``--lrs -1e-3`` is read as the value (argparse would take it for an option) and refused by name."""
    from midblock_plugin.cli import main

    assert main(["sweep", "--output-dir", "/nonexistent/never-made", "--lrs", "-1e-3", "--skip-eval"]) == 2
    assert "--lrs '-1e-3'" in capsys.readouterr().err
