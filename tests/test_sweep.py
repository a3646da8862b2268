"""``midblock sweep``: the intervals, the paired differences, ``--recipe paper`` field by field, and
one end-to-end sweep on a tiny model (real TRL and PEFT) checked against the results.json schema."""

import json
import subprocess
import sys

import numpy as np
import pytest

from midblock_plugin.experiments import stats
from midblock_plugin.experiments.options import SWEEP_VARIANTS, JobOptions


# ---------------------------------------------------------------- intervals


def test_intervals_contain_the_mean():
    rng = np.random.default_rng(0)
    for k, n in ((1, 20), (3, 50), (5, 7)):
        tokens = rng.integers(1, 30, size=n)
        loss = rng.gamma(2.0, 1.0, size=(k, n)) * tokens
        iv = stats.interval(loss, tokens)
        assert iv["ci95"][0] <= iv["mean"] <= iv["ci95"][1]
        assert iv["ci95"][0] < iv["ci95"][1]  # rows vary, so the interval has width
        assert iv["mean"] == pytest.approx(np.mean(loss.sum(axis=1) / tokens.sum()))
        assert len(iv["per_seed"]) == k
    # rows with no scored token are ignored, not counted as zero loss
    with_empty = stats.interval(np.c_[loss, np.zeros((k, 1))], np.r_[tokens, 0])
    assert with_empty["mean"] == pytest.approx(stats.interval(loss, tokens)["mean"])


def test_paired_difference_of_uniform_to_itself_is_zero():
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 30, size=40)
    uniform = rng.gamma(2.0, 1.0, size=(3, 40)) * tokens
    same = stats.paired_interval(uniform, uniform.copy(), tokens)
    assert same == {"mean_diff": 0.0, "ci95": [0.0, 0.0], "significant": False}
    # a variant lower by 0.1 per token on every row: exactly -0.1, significant; pairing removes the row spread
    better = stats.paired_interval(uniform - 0.1 * tokens, uniform, tokens)
    assert better["mean_diff"] == pytest.approx(-0.1)
    assert better["ci95"] == pytest.approx([-0.1, -0.1]) and better["significant"]
    noisy = stats.paired_interval(uniform + rng.normal(0, 0.5, size=uniform.shape) * tokens, uniform, tokens)
    assert noisy["ci95"][0] <= noisy["mean_diff"] <= noisy["ci95"][1]
    assert noisy["significant"] == (noisy["ci95"][0] > 0 or noisy["ci95"][1] < 0)
    with pytest.raises(ValueError, match="same seeds and rows"):
        stats.paired_interval(uniform[:2], uniform, tokens)


def test_gsm8k_accuracy_pooled_over_seeds():
    acc = stats.accuracy(
        [{"exact_match": 0.1, "stderr": 0.03, "n": 100}, {"exact_match": 0.2, "stderr": 0.04, "n": 100}]
    )
    assert acc == {"exact_match": pytest.approx(0.15), "stderr": pytest.approx(0.025), "n": 100, "seeds": 2}


# ---------------------------------------------------------------- --recipe paper


PAPER = dict(
    shuffle_seed=42,
    num_examples=2000,
    max_length=128,
    max_steps=-1,
    batch_size=4,
    grad_accum=8,
    lora_alpha=128.0,
    alpha_policy="fixed",
    lora_dropout=0.05,
    eval_protocol="paper",
    rank=64,
    lr=1e-4,
)


@pytest.mark.parametrize(
    "depth,rank,lr", [(16, 64, 1e-4), (32, 64, 1e-4), (40, 64, 2e-4), (64, 8, 5e-5), (30, 64, 1e-4)]
)
def test_recipe_paper_sets_the_authors_setup(tmp_path, depth, rank, lr):
    opts = JobOptions(output_dir=str(tmp_path), recipe="paper").resolved(num_layers=depth)
    for name, value in dict(PAPER, rank=rank, lr=lr).items():
        assert getattr(opts, name) == value, name
    assert opts.recipe == "paper"
    mb = opts.midblock_config("01110")
    assert (mb.rank, mb.lora_alpha, mb.alpha_policy, mb.lora_dropout, mb.target_modules) == (
        rank,
        128.0,
        "fixed",
        0.05,
        "attention",
    )
    ev = opts.eval_settings()  # zero-shot, greedy, 64 new tokens, scored on the last number
    assert ev.protocol == "paper" and ev.effective_num_fewshot == 0
    assert ev.gen_kwargs == {"max_gen_toks": 64, "do_sample": False} and ev.headline_filter == "flexible-extract"


def test_recipe_paper_is_q_k_v_o_on_a_model(tmp_path):
    from midblock_plugin.plan import build_plan
    from midblock_plugin.testing import tiny_model

    opts = JobOptions(output_dir=str(tmp_path), recipe="paper").resolved(num_layers=16)
    lora = build_plan(tiny_model("llama", num_layers=16), opts.midblock_config("11111")).lora_config()
    assert sorted(m.split(".")[-1] for m in lora.target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert lora.lora_alpha == 128 and lora.r == 64 and lora.lora_dropout == 0.05


def test_explicit_options_beat_the_recipe_and_the_default_recipe_is_unchanged(tmp_path):
    opts = JobOptions(output_dir=str(tmp_path), recipe="paper", lr=3e-4, rank=8, shuffle_seed=7).resolved(
        num_layers=16
    )
    assert (opts.lr, opts.rank, opts.shuffle_seed, opts.lora_alpha) == (3e-4, 8, 7, 128.0)
    default = JobOptions(output_dir=str(tmp_path), preset="cpu").resolved()
    assert (
        default.recipe,
        default.rank,
        default.alpha_policy,
        default.lora_alpha,
        default.shuffle_seed,
        default.max_steps,
        default.grad_accum,
        default.lr,
        default.eval_protocol,
    ) == ("default", 16, "ratio", None, None, 16, 1, 5e-4, "lm-eval")


def test_paper_shuffle_matches_datasets_shuffle(tmp_path):
    from datasets import Dataset

    from midblock_plugin.experiments.jobs import _load_data

    opts = JobOptions(output_dir=str(tmp_path), recipe="paper").resolved(num_layers=16)
    train = _load_data(opts, log=lambda *_: None).train
    rows = _load_data(JobOptions(output_dir=str(tmp_path), preset="cpu").resolved(), log=lambda *_: None).train
    expected = Dataset.from_list(rows).shuffle(seed=42)
    assert [r["question"] for r in train[:5]] == expected[:5]["question"]


@pytest.mark.parametrize("command", ["run", "compare", "sweep"])
def test_cli_takes_the_recipe_and_general_text(tmp_path, command):
    from midblock_plugin.cli import build_parser
    from midblock_plugin.cli.run import options

    args = build_parser().parse_args(
        [command, "--recipe", "paper", "--general-text", "f.txt", "--output-dir", str(tmp_path)]
    )
    opts = options(args)
    assert opts.recipe == "paper" and opts.general_text == "f.txt" and opts.rank is None
    if command == "sweep":
        assert opts.seeds == 5 and opts.variants == SWEEP_VARIANTS
    else:
        assert opts.seeds == 1


def test_bad_sweep_input_fails_before_training(tmp_path, capsys):
    from midblock_plugin.cli import main

    assert main(["sweep", "--seeds", "0", "--output-dir", str(tmp_path / "a")]) == 2
    assert "--seeds 0" in capsys.readouterr().err
    assert (
        main(
            [
                "sweep",
                "--general-text",
                str(tmp_path / "nope.txt"),
                "--preset",
                "cpu",
                "--output-dir",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--general-text" in err and "no such file" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------- end to end


def _sweep(*args):
    r = subprocess.run(
        [sys.executable, "-m", "midblock_plugin.cli", "sweep", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return r


TINY_SWEEP = [
    "--preset",
    "cpu",
    "--max-steps",
    "1",
    "--num-examples",
    "4",
    "--heldout",
    "6",
    "--max-length",
    "64",
    "--forgetting-blocks",
    "3",
    "--skip-eval",
    "--seeds",
    "1",
]


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory):
    """Two windows x two rates x one seed on a tiny model, with the layer-wise analysis."""
    from midblock_plugin.testing import save_tiny

    tmp = tmp_path_factory.mktemp("sweep")
    model = save_tiny(tmp / "tiny", "llama", num_layers=10, seed=0)
    out = tmp / "sweep"
    _sweep(
        "--model",
        model,
        *TINY_SWEEP,
        "--variants",
        "11111,01110",
        "--lrs",
        "1e-4,5e-3",
        "--validation",
        "5",
        "--analysis-prompts",
        "4",
        "--output-dir",
        out,
    )
    return model, out, json.loads((out / "results.json").read_text())


def test_sweep_end_to_end_results_schema(lr_sweep):
    _, out, res = lr_sweep
    assert [v["mask"] for v in res["variants"]] == ["11111", "01110"]
    assert res["lrs"] == [1e-4, 5e-3] and res["validation_rows"] == 5 and res["heldout_rows"] == 6
    uni, mid = res["variants"]
    for v in res["variants"]:
        assert {
            "mask",
            "layers",
            "rank",
            "seeds",
            "heldout_loss",
            "vs_uniform",
            "forgetting",
            "best_lr",
            "by_lr",
        } <= set(v)
        assert v["seeds"] == 1 and v["seed_values"] == [42] and len(v["runs"]) == 2  # one seed, two rates
        assert [b["lr"] for b in v["by_lr"]] == [1e-4, 5e-3]
        for b in v["by_lr"]:
            assert b["validation_loss"] > 0 and b["heldout_loss"] > 0
        # the chosen rate is the one with the lowest validation loss (never the held-out loss)
        assert v["best_lr"] == min(v["by_lr"], key=lambda b: b["validation_loss"])["lr"]
        run = next(r for r in v["runs"] if r["lr"] == v["best_lr"])
        assert v["heldout_loss"]["mean"] == pytest.approx(run["heldout_loss"])
        assert v["heldout_loss"]["ci95"] is None  # one seed: no interval
        assert v["vs_base"]["mean_diff"] < 0  # one step already lowers the held-out loss of a random model
        f = v["forgetting"]
        assert {"general_text", "loss_base", "delta_loss", "kl", "kl_at_uniform_gain"} <= set(f) and f["kl"][
            "mean"
        ] > 0
        at = f["kl_at_uniform_gain"]
        assert len(at["per_seed"]) == 1
        if at["per_seed"][0] is None:  # uniform's gain outside this variant's range over the grid: said, not faked
            assert "outside" in f["kl_at_uniform_gain_note"]
        assert "gsm8k" not in v  # not evaluated (--skip-eval)
    assert uni["vs_uniform"]["reference"] and uni["vs_uniform"]["p_value"] is None
    assert uni["forgetting"]["kl_at_uniform_gain"]["per_seed"][0] == pytest.approx(
        next(r for r in uni["runs"] if r["lr"] == uni["best_lr"])["general_kl_mean"]
    )
    d = mid["vs_uniform"]
    assert {"p_value", "p_holm", "significant"} <= set(d) and d["significant"] is False  # one seed: no test
    assert d["mean_diff"] == pytest.approx(mid["heldout_loss"]["mean"] - uni["heldout_loss"]["mean"])
    assert uni["layers"] == list(range(10)) and mid["layers"] == list(range(2, 8)) and mid["rank"] == 160 // 6
    for lr in ("0.0001", "0.005"):  # one trainer directory per variant and rate
        assert (out / "variant-01110" / f"lr-{lr}" / "adapter").is_dir()
    ids = res["row_ids"]  # validation rows: training-file rows never trained on; held-out rows: test-file rows
    assert len(ids["validation"]) == 5 and not set(ids["validation"]) & set(ids["training"])
    for png in (
        "heldout_loss.png",
        "gain_vs_forgetting.png",
        "paired_differences.png",
        "loss_curves.png",
        "drift.png",
    ):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    report = (out / "report.md").read_text()
    for section in (
        "## Learning rates",
        "## Against uniform and against the base",
        "## Forgetting",
        "## What is significant",
    ):
        assert section in report
    assert (
        "intervals need at least 3 seeds" in report
        and "significantly" not in report.split("## What is significant")[1]
    )
    # the analysis ran on the uniform model of the comparison (first seed, its chosen rate)
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    assert analysis["tuned_variant"] == "11111" and res["analysis"]["tuned_variant"] == "11111"
    assert res["analysis"]["reused_comparison_run"] and res["analysis"]["lr"] == uni["best_lr"]


def test_sweep_tests_the_recommended_window(lr_sweep, tmp_path):
    model, out, res = lr_sweep
    analysis = out / "analysis" / "analysis.json"
    layers = json.loads(analysis.read_text())["recommendation"]["layers"]
    new = tmp_path / "rec"
    _sweep(
        "--model",
        model,
        *TINY_SWEEP,
        "--variants",
        "recommended,11111",
        "--window-from",
        analysis,
        "--skip-analysis",
        "--seed",
        "7",
        "--output-dir",
        new,
    )
    got = json.loads((new / "results.json").read_text())
    rec, uni = got["variants"]
    assert rec["mask"] == rec["variant"] == "recommended" and rec["layers"] == layers
    assert got["window_from"] == str(analysis) and rec["seed_values"] == [7]  # fresh seeds
    assert uni["mask"] == "11111" and rec["vs_uniform"]["mean_diff"] is not None
    assert (new / "variant-recommended" / "adapter").is_dir()
