"""What the main job and the training callback print: one short line per training step, the
per-layer drift only with --verbose (always in drift.json and the trainer's logs), a result line
per measuring stage, and none of the library output the job turns off or filters.

Real runs: ``midblock run`` on a tiny random model (real TRL, PEFT, lm-eval) and a real
``SFTTrainer`` with the ``MidBlockCallback`` for the TRL / Axolotl console line."""

import inspect
import json
import logging
import re
import subprocess
import sys

import pytest

from midblock_plugin.training.progress import drift_lines, step_line


pytestmark = pytest.mark.slow

STEP = re.compile(r"^step (\d+)/(\d+)  loss \d+\.\d{4}  lr \d\.\d\de-\d\d  \d+\.\d\d s/step$")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from midblock_plugin.testing import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "tiny-base", "llama", num_layers=10, seed=0)


def _run(tiny_base, out, *extra):
    args = [
        "--model", str(tiny_base), "--preset", "cpu", "--max-steps", "2", "--num-examples", "8", "--heldout", "3",
        "--forgetting-blocks", "4", "--skip-analysis", "--output-dir", str(out), *extra,
    ]  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "midblock_plugin.cli", "run", *args], capture_output=True, timeout=900)
    # bytes, not text=True: universal newlines would turn the bars' carriage returns into line breaks
    stdout, stderr = r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")
    assert r.returncode == 0, stderr[-4000:]
    return stdout + stderr


def _lines(text: str) -> list[str]:
    """What a terminal keeps of each line: the text after its last carriage return (bars redraw with \\r)."""
    return [line.split("\r")[-1] for line in text.split("\n")]


def test_default_run_prints_one_short_line_per_step_a_line_per_stage_and_no_library_noise(tiny_base, tmp_path):
    out = tmp_path / "run"
    text = _run(tiny_base, out, "--eval-limit", "1", "--num-fewshot", "0", "--max-gen-toks", "4")
    lines = _lines(text)
    steps = [line for line in lines if line.startswith("step ")]
    assert [STEP.match(s).group(1) for s in steps] == ["1", "2"], steps  # one line per step, in this form
    assert all(len(s) < 120 for s in steps)
    assert "layer_" not in text and "midblock/weight_change" not in text  # the drift stays off the console...
    drift = json.loads((out / "variant-01110" / "midblock" / "drift.json").read_text())
    assert set(drift["history"][-1]["weight_change"]) == {str(i) for i in range(2, 8)}  # ...and in drift.json
    for stage in (  # every measuring stage ends with its result line
        "base model: held-out answer loss ",
        "base model: general-text loss ",
        "01110: held-out answer loss ",
        "01110: forgetting KL(base || tuned) ",
        "trained 2 steps in ",
    ):
        assert any(line.startswith(stage) for line in lines), stage
    assert "device: CPU" in text or "device: CUDA" in text
    for noise in (  # turned off or filtered for the job (experiments/console.py, evaluation/runner.py)
        "Loading weights",
        "Tokenizing train dataset",
        "is deprecated",
        "Setting accelerator to CPU",
        "Ensure 'do_sample=True'",
        "`pretrained` model kwarg is not of type `str`",
        "{'loss':",
    ):
        assert noise not in text, noise
    assert "lm-eval (final): gsm8k" in text  # the evaluation itself still reports
    assert max(len(line) for line in lines) < 200


def test_verbose_prints_the_per_layer_drift_under_each_step(tiny_base, tmp_path):
    text = _run(tiny_base, tmp_path / "run", "--skip-eval", "--skip-forgetting", "--verbose")
    lines = _lines(text)
    for i, line in enumerate(lines):
        if line.startswith("step "):
            assert STEP.match(line), line
            below = lines[i + 1 : i + 3]
            assert below[0].startswith("  weight_change: layer_02=") and "layer_07=" in below[0], below
            assert below[1].startswith("  grad_norm: layer_02="), below
    assert sum(line.startswith("step ") for line in lines) == 2


def test_trl_console_line_keeps_the_trainers_keys_without_the_drift(tmp_path, capsys):
    """TRL / Axolotl keep transformers' own progress line; bind() leaves the 2 x n per-layer entries out
    of it. They still reach the logs (and so the reporters)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from midblock_plugin import MidBlockConfig
    from midblock_plugin.integrations.trl import MidBlockCallback, midblock_lora_config
    from midblock_plugin.testing import gsm8k_rows, tiny_model, tiny_tokenizer

    model = tiny_model("llama", num_layers=5, seed=0)
    mb = MidBlockConfig(rank=4)
    args = SFTConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, use_cpu=True, bf16=False,
        report_to=[], logging_steps=1, max_length=48, save_strategy="no", learning_rate=5e-3,
    )  # fmt: skip
    rows = [{"text": f"Question: {r['question']}\nAnswer: {r['answer']}"} for r in gsm8k_rows("train", 4)]
    cb = MidBlockCallback(mb, verbose=False)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tiny_tokenizer(),
        peft_config=midblock_lora_config(model, mb),
        callbacks=[cb],
    )
    cb.bind(trainer)
    capsys.readouterr()
    trainer.train()
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "'loss':" in text and "'learning_rate':" in text  # transformers' line, as TRL users know it
    assert "midblock/" not in text
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 2 and all("midblock/weight_change/layer_02" in e for e in logged)


def test_step_line_and_drift_lines():
    line = step_line(12, 16, {"loss": 2.0421, "learning_rate": 5e-4, "grad_norm": 1.3}, 1.918)
    assert line == "step 12/16  loss 2.0421  lr 5.00e-04  1.92 s/step" and STEP.match(line)
    logs = {f"midblock/weight_change/layer_{i:02d}": 0.01 * i for i in range(30)}
    logs |= {f"midblock/grad_norm/layer_{i:02d}": 0.1 for i in range(30)}
    shown = drift_lines({"loss": 1.0, **logs})
    assert [s.split(":")[0] for s in shown] == ["  weight_change", "  grad_norm"]
    assert shown[0].count("layer_") == 30 and "layer_29=0.29" in shown[0]


def test_the_filtered_lm_eval_messages_exist_and_only_they_are_dropped(caplog):
    """The prefixes match the installed lm-eval's messages; a gen_kwargs notice that does sample is kept."""
    import lm_eval.evaluator
    import lm_eval.models.huggingface

    from midblock_plugin.evaluation import runner

    sources = {"lm_eval.evaluator": lm_eval.evaluator, "lm_eval.models.huggingface": lm_eval.models.huggingface}
    for name, prefixes in runner.MISLEADING_LM_EVAL_MESSAGES.items():
        for prefix in prefixes:
            assert prefix in inspect.getsource(sources[name]), (name, prefix)
    notice = "generation_kwargs: %s specified through cli, ... Ensure 'do_sample=True' for non-greedy decoding!"
    with caplog.at_level(logging.WARNING), runner._misleading_lm_eval_messages_off():
        logging.getLogger("lm_eval.evaluator").warning(notice, {"max_gen_toks": 8})
        logging.getLogger("lm_eval.evaluator").warning(notice, {"do_sample": True, "temperature": 0.7})
        logging.getLogger("lm_eval.evaluator").warning("Overwriting default num_fewshot of gsm8k from 5 to 1")
        logging.getLogger("lm_eval.models.huggingface").warning(
            "Passed an already-initialized model through `pretrained`, assuming single-process call"
        )
    kept = [r.getMessage() for r in caplog.records]
    assert kept == [
        notice % ({"do_sample": True, "temperature": 0.7},),
        "Overwriting default num_fewshot of gsm8k from 5 to 1",
    ]
    logging.getLogger("lm_eval.evaluator").warning(notice, {"max_gen_toks": 8})  # the filter is gone afterwards
    assert len(caplog.records) == 3
