"""``protocol="authors"``: the authors' GSM8K evaluation (:mod:`midblock_plugin.evaluation.authors`).

The question selection is checked against the real ``datasets`` shuffle on the real GSM8K
test split; generation runs on tiny real models (one with hand-set weights that answers
with a fixed text, so the scoring of a whole run is known in advance).
"""

from __future__ import annotations

import json
import math
import os

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from midblock_plugin.data import gsm8k  # noqa: E402
from midblock_plugin.evaluation import EvalSettings  # noqa: E402
from midblock_plugin.evaluation.authors import (  # noqa: E402
    FILTER,
    gold_number,
    last_number,
    mean_stderr,
    same_number,
    score,
    select_questions,
    shuffled_order,
)
from midblock_plugin.testing import GSM8K_DIR, gsm8k_rows  # noqa: E402


pytestmark = pytest.mark.skipif(
    not (GSM8K_DIR / "test.jsonl").is_file(), reason=f"GSM8K not found at {GSM8K_DIR} (set MIDBLOCK_GSM8K_DIR)"
)


# ------------------------------------------------------------------ selection
def test_selection_is_datasets_shuffle_with_seed_42_first_100():
    datasets = pytest.importorskip("datasets")
    rows = gsm8k_rows("test")
    assert len(rows) == 1319
    picked = select_questions(rows)
    ds = datasets.Dataset.from_list(rows).shuffle(seed=42).select(range(100))
    assert len(picked) == 100
    assert [r for _, r in picked] == [dict(r) for r in ds]
    assert [rows[i] for i, _ in picked] == [r for _, r in picked]  # the indices point into test.jsonl
    assert len({i for i, _ in picked}) == 100 and [i for i, _ in picked] != list(range(100))
    # a limit takes the first N of the same order; another seed gives another order
    assert select_questions(rows, 5) == picked[:5]
    assert shuffled_order(len(rows), seed=0)[:100] != [i for i, _ in picked]
    with pytest.raises(ValueError, match="limit=2000"):
        select_questions(rows, 2000)


# ------------------------------------------------------------------ scoring
@pytest.mark.parametrize(
    "text, expected",
    [
        ("She pays 1,000 dollars.", "1000"),
        ("The answer is 3.0.", "3.0"),
        ("It is 18.", "18"),  # the trailing period is not a decimal point
        ("The temperature fell to -5 degrees", "-5"),
        ("so 12 + 30 = 42 and then .5 more", ".5"),
        ("no number here", None),
        ("", None),
        ("$1,234,567.89 in total", "1234567.89"),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


@pytest.mark.parametrize(
    "predicted, gold, same",
    [
        ("1000", "1000", True),
        ("3.0", "3", True),
        ("3.5", "3", False),
        ("-5", "-5", True),
        ("5", "-5", False),
        (None, "5", False),
        ("0.50", ".5", True),
        ("007", "7", True),
    ],
)
def test_float_comparison(predicted, gold, same):
    assert same_number(predicted, gold) is same


def test_gold_number_strips_commas_and_spaces():
    assert gold_number("so 1,000 + 234 = 1,234\n#### 1,234") == "1234"
    assert gold_number("x #### -7 ") == "-7"
    with pytest.raises(ValueError, match="####"):
        gold_number("no marker")


def test_no_stop_sequence_the_last_number_of_the_whole_generation_counts():
    row = {"question": "Tom has 3 bags of 24 apples. How many apples?", "answer": "3*24=<<3*24=72>>72\n#### 72"}
    right_then_more = " 3*24 = 72 apples.\n\nQuestion: Sam has 5 pears and eats 2. How many are left?\nAnswer: 3"
    right_at_the_end = " Sam has 5 pears. Question: ... so Tom has 72"
    recs = score([row], [(0, row), (0, row)], [right_then_more, right_at_the_end])
    # lm-eval's stop at "Question:" would have scored the first one right; the authors take its last number
    assert [r["extracted"] for r in recs] == ["3", "72"]
    assert [r["correct"] for r in recs] == [False, True]
    assert recs[1]["scores"][FILTER] == {"exact_match": 1.0} and recs[1]["gold"] == "72"


def test_stderr_is_lm_evals_for_a_mean():
    import numpy as np

    scores = [True] * 3 + [False] * 7
    assert mean_stderr(scores) == pytest.approx(np.std(np.array(scores, float), ddof=1) / math.sqrt(10))
    assert mean_stderr(scores) == pytest.approx(math.sqrt(0.3 * 0.7 / 9))
    assert mean_stderr([True]) is None


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(num_fewshot=5), "num_fewshot"),
        (dict(max_gen_toks=256), "max_gen_toks"),
        (dict(tasks="gsm8k,arc_easy"), "tasks"),
        (dict(limit=0.5), "limit"),
        (dict(apply_chat_template=True), "apply_chat_template"),
        (dict(system_instruction="Be brief."), "system_instruction"),
        (dict(max_length=512), "max_length"),
        (dict(backend="vllm"), "backend='vllm'"),
        (dict(backend="hf", processes=2), "processes"),
    ],
)
def test_settings_refuse_what_the_authors_protocol_cannot_honour(kwargs, key):
    with pytest.raises(ValueError, match=key) as err:
        EvalSettings(protocol="authors", **kwargs)
    assert "authors" in str(err.value)


def test_settings_accept_the_authors_values():
    s = EvalSettings(protocol="authors", num_fewshot=0, max_gen_toks=64, limit=10, backend="hf")
    assert s.headline_filter == FILTER and s.effective_num_fewshot == 0
    info = s.protocol_info()
    assert info["name"] == "authors" and info["max_gen_toks"] == 64 and "seed 42" in info["description"]


# ------------------------------------------------------------------ generation
def test_greedy_generation_is_deterministic_and_batch_invariant():
    from midblock_plugin.evaluation.authors import generate
    from midblock_plugin.testing import tiny_model, tiny_tokenizer

    prompts = [gsm8k.prompt(r) for r in gsm8k_rows("test", 4)]
    tok = tiny_tokenizer()
    lengths = {len(tok(p)["input_ids"]) for p in prompts}
    assert len(lengths) > 1  # the batch really is padded
    model = tiny_model(seed=3)
    one = generate(model, tok, prompts, batch_size=1, max_new_tokens=16)
    four = generate(model, tok, prompts, batch_size=4, max_new_tokens=16)
    assert one == four and all(one)
    assert generate(model, tok, prompts, batch_size=4, max_new_tokens=16) == four
    assert tok.padding_side == "right"  # the caller's tokenizer is not changed


def _answering_model(tok, text: str):
    """A tiny Llama that, after the prompt's last token ':', writes ``text`` and loops through it
    (every token's successor is fixed by hand-set weights: attention and MLP outputs are zeroed,
    so each position's logits depend on its own token only). ``text`` must end with ':' and use
    each other token once."""
    import torch

    from midblock_plugin.testing import tiny_model

    ids = tok(text)["input_ids"]
    colon = tok(":")["input_ids"]
    assert ids[-1:] == colon and len(set(ids)) == len(ids)
    chain = colon + ids  # ':' -> first token -> ... -> ':' (a loop)
    model = tiny_model(seed=0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.zero_()
        for k, (a, b) in enumerate(zip(chain, chain[1:])):
            emb[a] = torch.nn.functional.one_hot(torch.tensor(k), emb.shape[1]).float()
            head[b] = 10.0 * emb[a]
    return model


def test_a_run_scores_the_last_number_of_all_64_tokens(tmp_path):
    from midblock_plugin.evaluation import evaluate_model
    from midblock_plugin.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    rows = gsm8k_rows("test")
    index, first = select_questions(rows, 1)[0]
    assert gold_number(first["answer"]) == "109"  # the first of the authors' 100 questions (test.jsonl row 31)
    # every answer is " 109.\nQuestion:" over and over (6 tokens; 64 = 10 x 6 + 4 ends on "109.\n")
    model = _answering_model(tok, " 109.\nQuestion:")
    model.train()
    settings = EvalSettings(protocol="authors", limit=3, batch_size=2, save_samples=True)
    report = evaluate_model(model, tok, settings, output_dir=tmp_path, print_table=False)
    assert model.training  # train / eval mode restored

    samples = report["samples"]["gsm8k"]
    assert [s["question_index"] for s in samples] == [i for i, _ in select_questions(rows, 3)] and samples[0][
        "question_index"
    ] == index
    for s in samples:
        assert s["generation"].count("Question:") == 10  # no stop sequence: all 64 tokens are kept
        assert len(tok(s["generation"])["input_ids"]) == 64
        assert s["extracted"] == "109" and s["prompt"] == gsm8k.prompt(rows[s["question_index"]])
    assert [s["correct"] for s in samples] == [s["gold"] == "109" for s in samples] == [True, False, False]

    res = report["results"]["gsm8k"]
    assert res["metrics"][FILTER]["exact_match"] == pytest.approx(1 / 3)
    assert res["metrics"][FILTER]["exact_match_stderr"] == pytest.approx(math.sqrt((1 / 3) * (2 / 3) / 2))
    assert res["n_samples"] == 3 and res["n_samples_total"] == 1319 and res["num_fewshot"] == 0
    assert res["selection"]["seed"] == 42 and res["selection"]["indices"] == [s["question_index"] for s in samples]
    assert report["headline"]["gsm8k"] == {
        "protocol": "authors",
        "filter": FILTER,
        "metric": "exact_match",
        "value": pytest.approx(1 / 3),
        "stderr": res["metrics"][FILTER]["exact_match_stderr"],
        "n": 3,
    }
    assert report["protocol"]["name"] == "authors"
    written = json.loads((tmp_path / "eval" / "gsm8k.json").read_text())
    assert written["headline"]["value"] == pytest.approx(1 / 3) and written["protocol"]["name"] == "authors"
    lines = (tmp_path / "eval" / "gsm8k.samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["correct"] for line in lines] == [True, False, False]


def test_after_the_save_the_command_asks_for_the_authors_protocol(tmp_path):
    from midblock_plugin.evaluation.saved import eval_command

    cmd = eval_command(tmp_path, EvalSettings(protocol="authors", backend="hf", limit=5), tmp_path / "gsm8k.json")
    assert cmd[cmd.index("--protocol") + 1] == "authors" and cmd[cmd.index("--limit") + 1] == "5"


def test_after_the_save_hf_backend_equals_in_memory(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from midblock_plugin.evaluation import evaluate_model
    from midblock_plugin.evaluation.saved import evaluate_after_save
    from midblock_plugin.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    model = _answering_model(tok, " 109.\nQuestion:")
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    settings = EvalSettings(protocol="authors", backend="hf", limit=2, save_samples=True)
    saved = evaluate_after_save(tmp_path / "model", settings, output_dir=tmp_path / "out")
    assert saved["protocol"]["name"] == "authors" and saved["headline"]["value"] == pytest.approx(0.5)
    on_disk = [
        json.loads(line) for line in (tmp_path / "out" / "eval" / "gsm8k.samples.jsonl").read_text().splitlines()
    ]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    memory = evaluate_model(
        loaded,
        AutoTokenizer.from_pretrained(tmp_path / "model"),
        EvalSettings(protocol="authors", limit=2, save_samples=True),
        print_table=False,
    )
    assert [s["generation"] for s in on_disk] == [s["generation"] for s in memory["samples"]["gsm8k"]]
    assert [s["correct"] for s in on_disk] == [True, False]
