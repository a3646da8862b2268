"""lm-eval GSM8K evaluation: settings, offline tasks, the scoring path, and agreement of the
in-memory evaluation with ``midblock eval`` and with lm-eval's own command line.

Everything runs offline on tiny random models and the real GSM8K rows in
``../shared/data/gsm8k`` (read in place, never copied into the repository).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from midblock_plugin.evaluation import EvalSettings  # noqa: E402
from midblock_plugin.testing import GSM8K_DIR, gsm8k_rows  # noqa: E402


pytestmark = pytest.mark.skipif(
    not (GSM8K_DIR / "test.jsonl").is_file(), reason=f"GSM8K not found at {GSM8K_DIR} (set MIDBLOCK_GSM8K_DIR)"
)

#: Small and fast: a few rows, one few-shot example, short generations.
FAST = dict(limit=4, num_fewshot=1, max_gen_toks=16, batch_size=2)
OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def small_gsm8k(dest: Path, n_train: int = 8, n_test: int = 6) -> Path:
    """A temporary GSM8K directory with the first rows of the real splits (test-local, deleted after)."""
    dest.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        with open(dest / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for row in gsm8k_rows(split, n):
                fh.write(json.dumps(row) + "\n")
    return dest


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(limit=0), "limit"),
        (dict(limit=-2), "limit"),
        (dict(limit=1.5), "limit"),
        (dict(num_fewshot=-1), "num_fewshot"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size="big"), "batch_size"),
        (dict(max_gen_toks=0), "max_gen_toks"),
        (dict(tasks=[]), "tasks"),
        (dict(tasks="gsm8k,gsm8k"), "tasks"),
        (dict(fewshot_as_multiturn=True), "fewshot_as_multiturn"),
        (dict(output_subdir="/abs"), "output_subdir"),
        (dict(enabled="yes"), "enabled"),
        (dict(bootstrap_iters=-1), "bootstrap_iters"),
    ],
)
def test_settings_reject_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EvalSettings(**kwargs)


def test_settings_accept_and_normalise():
    s = EvalSettings(tasks="gsm8k, gsm8k_cot", limit=0.25, batch_size="auto:2", apply_chat_template=True)
    assert s.tasks == ["gsm8k", "gsm8k_cot"] and s.limit == 0.25 and s.batch_size == "auto:2"
    assert s.multiturn is True  # follows apply_chat_template, like lm-eval's CLI
    assert EvalSettings(limit=3.0).limit == 3 and EvalSettings(batch_size="4").batch_size == 4
    assert EvalSettings().resolved_data_dir() == GSM8K_DIR.resolve()
    assert EvalSettings(data_dir="hub").resolved_data_dir() is None
    with pytest.raises(ValueError, match="unknown evaluation option"):
        EvalSettings.from_dict({"limt": 3})
    assert EvalSettings.from_dict({"limit": 3}).limit == 3
    assert json.loads(json.dumps(s.to_dict()))["tasks"] == ["gsm8k", "gsm8k_cot"]


def test_settings_check_the_data_dir(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):  # an OptionError about data_dir, spelled per surface
        EvalSettings(data_dir=str(tmp_path / "missing"))
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "a #### 1"}\n')
    with pytest.raises(ValueError, match="test.jsonl"):
        EvalSettings(data_dir=str(tmp_path))
    (tmp_path / "test.jsonl").write_text('{"prompt": "q"}\n')
    with pytest.raises(ValueError, match="'question' and 'answer'"):
        EvalSettings(data_dir=str(tmp_path))
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answer": "a #### 1"}\n')
    assert EvalSettings(data_dir=str(tmp_path)).resolved_data_dir() == tmp_path.resolve()


# ------------------------------------------------------------------------- offline tasks
def test_offline_task_includes_lm_evals_own_gsm8k_yaml(tmp_path):
    import yaml

    from midblock_plugin.evaluation.tasks import get_task_manager, gsm8k_task_yamls, lm_eval_tasks_dir, plan_tasks

    plan = plan_tasks(EvalSettings(data_dir=str(GSM8K_DIR)))
    cfg = yaml.safe_load((Path(plan.include_path) / "gsm8k.yaml").read_text())
    assert cfg["include"] == str((lm_eval_tasks_dir() / "gsm8k" / "gsm8k.yaml").resolve())
    assert cfg["task"] == "gsm8k" and cfg["dataset_path"] == "json" and cfg["dataset_name"] is None
    assert cfg["dataset_kwargs"]["data_files"]["test"] == str(GSM8K_DIR.resolve() / "test.jsonl")
    assert {"gsm8k", "gsm8k_cot"} <= set(gsm8k_task_yamls())
    assert plan.sources["gsm8k"]["kind"] == "local"
    # lm-eval resolves 'gsm8k' to the override, which keeps lm-eval's prompt, filters and metric;
    # lm-eval's index of built-in tasks is not needed for it (the include is a file path)
    assert plan.include_defaults is False
    tm = plan.task_manager
    assert get_task_manager(plan.include_path, False) is tm  # built once
    task = tm.load(["gsm8k"])["tasks"]["gsm8k"]
    assert task.config.dataset_path == "json"
    assert task.config.doc_to_text == "Question: {{question}}\nAnswer:"
    assert [f["name"] for f in task.config.filter_list] == ["strict-match", "flexible-extract"]
    assert task.config.metric_list[0]["metric"] == "exact_match"


def test_unknown_task_is_rejected_with_suggestions():
    from midblock_plugin.evaluation.tasks import plan_tasks

    with pytest.raises(ValueError, match=r"'gsm9k' is not an lm-eval task.*'gsm8k'"):
        plan_tasks(EvalSettings(tasks=["gsm9k"], data_dir="hub"))
    # other lm-eval tasks are accepted next to the local GSM8K (checked against lm-eval's full index)
    plan = plan_tasks(EvalSettings(tasks=["gsm8k", "arc_easy"]))
    assert plan.include_defaults is True
    assert plan.sources["gsm8k"]["kind"] == "local" and plan.sources["arc_easy"] == {
        "kind": "hub",
        "gsm8k_family": False,
    }


# ------------------------------------------------------------------------- scoring path
class _AnswerLM:
    """Factory for lm-eval LMs (test doubles of the *model*) that answer each GSM8K
    question with its gold solution (``right=True``) or a wrong number."""

    @staticmethod
    def build(right: bool):
        from lm_eval.api.model import LM

        gold = {r["question"]: r["answer"] for r in gsm8k_rows("test", 50)}

        class AnswerLM(LM):
            def __init__(self):
                super().__init__()
                self.prompts = []

            def generate_until(self, requests):
                out = []
                for req in requests:
                    context = req.args[0]
                    self.prompts.append(context)
                    question = next(q for q in gold if context.endswith(f"Question: {q}\nAnswer:"))
                    out.append(" " + gold[question] if right else " I think it is 123456789.\n#### 123456789")
                return out

            def loglikelihood(self, requests):  # pragma: no cover - gsm8k only generates
                raise NotImplementedError

            def loglikelihood_rolling(self, requests):  # pragma: no cover
                raise NotImplementedError

        return AnswerLM()


@pytest.mark.parametrize("right, expected", [(True, 1.0), (False, 0.0)])
def test_scoring_path_is_lm_evals(tmp_path, right, expected):
    from midblock_plugin.evaluation import evaluate_model

    lm = _AnswerLM.build(right)
    report = evaluate_model(lm, None, EvalSettings(limit=5, num_fewshot=2), output_dir=tmp_path)
    metrics = report["results"]["gsm8k"]["metrics"]
    assert metrics["strict-match"]["exact_match"] == expected
    assert metrics["flexible-extract"]["exact_match"] == expected
    assert report["results"]["gsm8k"]["n_samples"] == 5 and len(lm.prompts) == 5
    # lm-eval's own prompt: two few-shot examples from train, then the test question
    assert all(p.count("Question: ") == 3 for p in lm.prompts)
    written = json.loads((tmp_path / "eval" / "gsm8k.json").read_text())
    assert written["metrics"] == metrics and written["task"] == "gsm8k" and written["n_samples"] == 5


# ------------------------------------------------- in memory == midblock eval == lm_eval CLI
def _lm_eval_cli_samples(out: Path) -> tuple[dict, dict[int, str]]:
    results = json.loads(Path(glob.glob(str(out / "*" / "results_*.json"))[0]).read_text())
    rows = [json.loads(line) for line in open(glob.glob(str(out / "*" / "samples_gsm8k_*.jsonl"))[0])]
    return results["results"]["gsm8k"], {r["doc_id"]: r["resps"][0][0] for r in rows}


def test_in_memory_equals_midblock_eval_equals_lm_eval_cli(tmp_path):
    from midblock_plugin.cli import main
    from midblock_plugin.evaluation import evaluate_model
    from midblock_plugin.testing import tiny_model, tiny_tokenizer

    model, tok = tiny_model("llama", num_layers=4, seed=1), tiny_tokenizer()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    settings = EvalSettings(**FAST, save_samples=True)

    mem = evaluate_model(model, tok, settings, output_dir=tmp_path / "mem")
    mem_file = json.loads((tmp_path / "mem" / "eval" / "gsm8k.json").read_text())
    mem_resps = {s["doc_id"]: s["response"] for s in mem["samples"]["gsm8k"]}
    assert len(mem_resps) == 4 and any(r.strip() for r in mem_resps.values())

    out = tmp_path / "cli" / "gsm8k.json"
    argv = [
        "eval",
        str(model_dir),
        "--limit",
        "4",
        "--num-fewshot",
        "1",
        "--max-gen-toks",
        "16",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--output",
        str(out),
        "--save-samples",
    ]
    assert main(argv) == 0
    cli = json.loads(out.read_text())
    cli_resps = {
        json.loads(line)["doc_id"]: json.loads(line)["response"] for line in open(out.with_name("gsm8k.samples.jsonl"))
    }
    assert cli["metrics"] == mem_file["metrics"]
    for key in ("task", "n_samples", "limit", "num_fewshot", "source"):
        assert cli[key] == mem_file[key], key
    assert cli_resps == mem_resps

    # lm-eval's own command line, same task directory, data, limit and generation settings
    lm_out = tmp_path / "lm_eval_out"
    cmd = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={model_dir},dtype=float32",
        "--tasks",
        "gsm8k",
        "--include_path",
        mem_file["source"]["include_path"],
        "--limit",
        "4",
        "--num_fewshot",
        "1",
        "--gen_kwargs",
        "max_gen_toks=16",
        "--batch_size",
        "2",
        "--device",
        "cpu",
        "--output_path",
        str(lm_out),
        "--log_samples",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=OFFLINE_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lm_results, lm_resps = _lm_eval_cli_samples(lm_out)
    assert lm_results["sample_len"] == mem_file["n_samples"] == 4
    for filt in ("strict-match", "flexible-extract"):
        assert lm_results[f"exact_match,{filt}"] == mem_file["metrics"][filt]["exact_match"]
        assert lm_results[f"exact_match_stderr,{filt}"] == mem_file["metrics"][filt]["exact_match_stderr"]
    assert lm_resps == mem_resps  # the very same generations, token for token


# ------------------------------------------------------------------------ report details
def test_report_schema_chat_template_and_side_effects(tmp_path):
    import torch

    from midblock_plugin.evaluation import evaluate_model
    from midblock_plugin.testing import tiny_model, tiny_tokenizer

    model, tok = tiny_model("llama", num_layers=4), tiny_tokenizer()
    model.train()
    vocab, pad, side = len(tok), tok.pad_token, tok.padding_side
    settings = EvalSettings(limit=2, num_fewshot=1, max_gen_toks=4, apply_chat_template=True, save_samples=True)

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    report = evaluate_model(model, tok, settings, output_dir=tmp_path, label="baseline")
    assert torch.equal(torch.rand(3), expected), "evaluation must not move the training RNG"
    assert model.training, "train/eval mode must be restored"
    assert (len(tok), tok.pad_token, tok.padding_side) == (vocab, pad, side), "training tokenizer untouched"

    prompt = report["samples"]["gsm8k"][0]["prompt"]
    assert prompt.count("<|im_start|>user") == 2  # few-shot example as its own chat turn (multiturn)
    data = json.loads((tmp_path / "eval" / "gsm8k.baseline.json").read_text())
    assert (tmp_path / "eval" / "gsm8k.baseline.samples.jsonl").is_file()
    assert data["label"] == "baseline" and data["task"] == "gsm8k"
    assert set(data["metrics"]) == {"strict-match", "flexible-extract"}
    for filt in data["metrics"].values():
        assert set(filt) == {"exact_match", "exact_match_stderr"}
        assert all(isinstance(v, float) for v in filt.values())
    assert data["n_samples"] == 2 and data["limit"] == 2 and data["num_fewshot"] == 1
    assert data["n_samples_total"] == 1319
    assert data["source"]["data_dir"] == str(GSM8K_DIR.resolve())
    assert set(data["timings"]) == {"task_setup_s", "evaluate_s", "total_s"} and data["timings"]["total_s"] > 0
    assert {"lm_eval", "transformers", "torch", "peft", "midblock_plugin"} <= {
        k for k, v in data["versions"].items() if v
    }
    assert data["settings"]["apply_chat_template"] is True
    assert data["distributed"] == {
        "mode": "single",
        "world_size": 1,
        "partitioner": None,
        "rows_per_rank": [2],
        "generate_calls_per_rank": [1],
    }
    assert data["protocol"]["name"] == "lm-eval" and data["headline"]["filter"] == "strict-match"
    assert data["lm_eval_config"]["doc_to_text"] == "Question: {{question}}\nAnswer:"


def test_baseline_change_and_table():
    from midblock_plugin.evaluation.results import add_baseline, flat_metrics, format_table

    def rep(label, strict, flex):
        return {
            "label": label,
            "tasks": ["gsm8k"],
            "limit": 10,
            "timings": {"total_s": 1.0},
            "results": {
                "gsm8k": {
                    "n_samples": 10,
                    "num_fewshot": 5,
                    "metrics": {
                        "strict-match": {"exact_match": strict, "exact_match_stderr": 0.1},
                        "flexible-extract": {"exact_match": flex, "exact_match_stderr": 0.1},
                    },
                }
            },
        }

    final = add_baseline(rep("final", 0.5, 0.6), rep("baseline", 0.2, 0.6))
    assert final["results"]["gsm8k"]["change"]["strict-match"]["exact_match"] == pytest.approx(0.3)
    assert final["results"]["gsm8k"]["change"]["flexible-extract"]["exact_match"] == pytest.approx(0.0)
    logs = flat_metrics(final)
    assert logs["lm_eval/gsm8k/strict-match/exact_match"] == 0.5
    assert logs["lm_eval/gsm8k/strict-match/exact_match_change"] == pytest.approx(0.3)
    assert flat_metrics(rep("baseline", 0.2, 0.6))["lm_eval_baseline/gsm8k/flexible-extract/exact_match"] == 0.6
    table = format_table(final)
    assert "strict-match" in table and "+0.3000" in table and "baseline" in table


# ------------------------------------------------------------------- errors and offline
def test_hub_gsm8k_offline_fails_with_a_clear_message(monkeypatch):
    from midblock_plugin.evaluation import EvaluationError, evaluate_model
    from midblock_plugin.testing import tiny_model, tiny_tokenizer

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EvaluationError, match="--data-dir DIR") as info:
        evaluate_model(
            tiny_model(num_layers=2), tiny_tokenizer(), EvalSettings(data_dir="hub", limit=1, num_fewshot=0)
        )
    assert "openai/gsm8k" in str(info.value)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--limit", "0"], "--limit 0: must be a positive integer"),
        (["--tasks", "gsm9k", "--data-dir", "hub"], "--tasks 'gsm9k': 'gsm9k' is not an lm-eval task"),
        (["--data-dir", "{tmp}"], "lacks train.jsonl and test.jsonl"),
        (["--adapter", "{tmp}"], "no adapter_config.json"),
        (["--fewshot-as-multiturn"], "--fewshot-as-multiturn"),
    ],
)
def test_cli_rejects_bad_input_before_loading_a_model(tmp_path, capsys, extra, message):
    from midblock_plugin.cli import main

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")  # not loadable: any attempt to load would fail differently
    assert main(["eval", str(model_dir)] + [e.format(tmp=tmp_path) for e in extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_rejects_a_directory_that_is_not_a_model(tmp_path, capsys):
    from midblock_plugin.cli import main

    assert main(["eval", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_registering_the_cli_is_cheap():
    code = (
        "import argparse, sys; from midblock_plugin.cli import eval as cli; "
        "p = argparse.ArgumentParser(); cli.register(p.add_subparsers()); "
        "heavy = [m for m in ('torch', 'lm_eval', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=OFFLINE_ENV)


def test_protocol_description_says_the_overrides_that_ran():
    """results.json's protocol description names --num-fewshot / --max-gen-toks when given, not the defaults."""
    from midblock_plugin.evaluation.settings import EvalSettings

    assert "5-shot" in EvalSettings().protocol_info()["description"]
    text = EvalSettings(num_fewshot=0, max_gen_toks=32).protocol_info()["description"]
    assert "0-shot" in text and "up to 32 new tokens" in text and "5-shot" not in text and "256" not in text
