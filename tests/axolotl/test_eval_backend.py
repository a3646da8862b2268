"""``midblock_eval`` with ``backend: hf`` and ``protocol: paper``: Axolotl trains and saves the
adapter, then rank 0 evaluates the *saved* model in its own process (``midblock eval
--backend hf``) under the paper's protocol; a missing vLLM and protocol contradictions fail
when the config is validated."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.axolotl.helpers import args_error as _error


pytestmark = pytest.mark.axolotl


def test_after_save_hf_backend_with_the_paper_protocol(workspace):
    from midblock_plugin.testing import GSM8K_DIR

    settings = {
        "backend": "hf",
        "protocol": "paper",
        "limit": 2,
        "batch_size": 2,
        "data_dir": str(GSM8K_DIR),
        "save_samples": True,
    }
    run = workspace.train("eval_after_save", midblock_eval=settings).check()
    out = run.output_dir
    report = json.loads((out / "eval" / "gsm8k.json").read_text())
    assert report["backend"] == "hf" and report["protocol"]["name"] == "paper"
    assert report["num_fewshot"] == 0 and report["n_samples"] == 2
    assert report["headline"]["filter"] == "flexible-extract"
    assert report["model"]["peft"] is True  # the saved adapter on its base, loaded by `midblock eval`
    assert not (out / "eval" / "error.json").exists()
    log = run.output
    saved, evaluated = (
        log.find("Model successfully saved"),
        log.find("lm-eval final evaluation of the saved model (hf"),
    )
    assert 0 <= saved < evaluated, "the evaluation must run after the model is saved"
    assert "midblock -m midblock_plugin.cli eval" not in log and "--backend hf" in log  # its own process
    assert len((out / "eval" / "gsm8k.samples.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"protocol": "paper", "num_fewshot": 5}, "protocol: 'paper', which fixes num_fewshot: 0"),
        ({"backend": "tgi"}, "choose one of 'in-memory', 'hf', 'vllm'"),
    ]
    + ([] if importlib.util.find_spec("vllm") else [({"backend": "vllm"}, "pip install -e '.[vllm]'")]),
)
def test_eval_backend_and_protocol_errors_fail_validation(settings, message):
    text = _error(midblock_eval=settings)
    assert "midblock_eval" in text and message in text
