"""Prompt sets for ``midblock analyze``: GSM8K, a JSONL file, or built-in sentences.

Rows are read and checked before any model is loaded; chat rows are rendered with the
tokenizer's chat template afterwards (:func:`render_prompts`).

>>> rows = load_prompt_rows("builtin", num_prompts=3)
>>> [type(r).__name__ for r in rows]
['str', 'str', 'str']
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

from midblock_plugin.data import gsm8k


#: A prompt row: plain text, or a list of chat messages ``[{"role": ..., "content": ...}]``.
PromptRow = Union[str, list]

#: Short, varied sentences used when no prompt set is given (no download needed).
BUILTIN_PROMPTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Question: A baker makes 24 muffins and sells 15 of them. How many are left?\nAnswer:",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "The French Revolution began in 1789 and reshaped European politics.",
    "Translate to French: Where is the train station?",
    "If a train travels 60 miles in 1.5 hours, its average speed is",
    "Water boils at 100 degrees Celsius at sea level.",
    "Write a haiku about autumn leaves falling in the wind.",
    "The mitochondria is often called the powerhouse of the cell.",
    "Question: Tom has 3 boxes with 12 pencils each. He gives away 10. How many remain?\nAnswer:",
    "SELECT name, age FROM users WHERE age > 30 ORDER BY name;",
    "Shakespeare wrote Hamlet around the year 1600.",
    "Explain why the sky appears blue during the day.",
    "The derivative of x squared with respect to x is 2x.",
    "Once upon a time, in a village by the sea, there lived an old fisherman.",
    "Mount Everest is the highest mountain above sea level.",
    "Summarize: The meeting was postponed because several members were travelling.",
    "A prime number has exactly two distinct positive divisors.",
    "The stock market fell sharply after the announcement of new tariffs.",
    "Question: Sara reads 20 pages a day. How many days to finish a 340-page book?\nAnswer:",
    "Please list three benefits of regular exercise.",
    "In 1969, Apollo 11 landed the first humans on the Moon.",
    "The capital of Japan is Tokyo, and the capital of Canada is Ottawa.",
    "for i in range(10):\n    print(i * i)",
    "Dear team, thank you for your hard work on the quarterly report.",
    "Gravity accelerates objects near Earth's surface at about 9.8 m/s^2.",
    "What is the difference between weather and climate?",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Question: A shirt costs $25 and is discounted by 20%. What is the sale price?\nAnswer:",
    "Neural networks learn by adjusting weights to reduce a loss function.",
    "The Amazon rainforest produces a large share of the world's oxygen.",
    "Roses are red, violets are blue, sugar is sweet, and so are you.",
    "Convert 5 kilometres to miles.",
    "The committee approved the budget after a long debate.",
    "Entropy measures the disorder of a thermodynamic system.",
    "She opened the door slowly and peered into the dark hallway.",
    "Question: There are 7 days in a week. How many days are in 9 weeks?\nAnswer:",
    "Vaccines train the immune system to recognise pathogens.",
    "The Pythagorean theorem states that a^2 + b^2 = c^2 for right triangles.",
)

#: Values of ``--prompts`` that are not file paths.
NAMED_SOURCES = ("builtin", "gsm8k")


gsm8k_prompt = gsm8k.prompt


def check_prompt_source(source: str, data_dir: str | os.PathLike | None = None, split: str = "test") -> None:
    """Raise ``ValueError``/``FileNotFoundError`` if ``source`` cannot be read (cheap; no model)."""
    if source == "builtin":
        return
    if source == "gsm8k":
        if gsm8k.locate(data_dir, option="--data-dir") is None:
            raise FileNotFoundError(
                f"--prompts gsm8k: no local GSM8K; pass --data-dir DIR holding {split}.jsonl "
                f"(rows with 'question'/'answer'), or set {gsm8k.ENV}."
            )
        return
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"--prompts {source!r}: not one of {', '.join(NAMED_SOURCES)} and no such file; give "
            "'builtin', 'gsm8k', or a JSONL file whose rows have a 'text' string or chat 'messages'."
        )


def _read_jsonl(path: Path, limit: int) -> list[PromptRow]:
    rows: list[PromptRow] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj: Any = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--prompts {str(path)!r}: line {lineno} is not valid JSON ({exc}).") from None
            if isinstance(obj, dict) and isinstance(obj.get("text"), str):
                rows.append(obj["text"])
            elif isinstance(obj, dict) and isinstance(obj.get("messages"), list) and obj["messages"]:
                msgs = obj["messages"]
                if not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
                    raise ValueError(
                        f"--prompts {str(path)!r}: line {lineno}: every message needs 'role' and "
                        '\'content\', e.g. {"role": "user", "content": "Hi"}.'
                    )
                rows.append(msgs)
            elif isinstance(obj, dict) and "question" in obj:
                rows.append(gsm8k_prompt(obj))
            else:
                keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                raise ValueError(
                    f"--prompts {str(path)!r}: line {lineno} has neither a 'text' string nor a "
                    f"non-empty 'messages' list (got {keys}); write rows like "
                    '{"text": "..."} or {"messages": [{"role": "user", "content": "..."}]}.'
                )
            if len(rows) >= limit:
                break
    if not rows:
        raise ValueError(f"--prompts {str(path)!r} holds no rows; give a JSONL file with at least two prompts.")
    return rows


def load_prompt_rows(
    source: str = "builtin",
    num_prompts: int = 200,
    data_dir: str | os.PathLike | None = None,
    split: str = "test",
) -> list[PromptRow]:
    """Up to ``num_prompts`` rows of ``source`` (``"builtin"``, ``"gsm8k"`` or a JSONL path).

    The built-in set holds 40 sentences; asking for more gives all 40 (duplicates would
    bias the rank and entropy metrics).
    """
    check_prompt_source(source, data_dir, split)
    if source == "builtin":
        return list(BUILTIN_PROMPTS[:num_prompts])
    if source == "gsm8k":
        return [gsm8k.prompt(r) for r in gsm8k.read_rows(split, n=num_prompts, data_dir=data_dir)]
    return _read_jsonl(Path(source), num_prompts)


def render_prompts(rows: list[PromptRow], tokenizer: Any) -> list[str]:
    """Turn rows into texts; chat rows go through ``tokenizer.apply_chat_template``."""
    texts: list[str] = []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            texts.append(row)
            continue
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"prompt {i} is a chat 'messages' row but the tokenizer has no chat template; "
                "use 'text' rows, or pass --tokenizer DIR with a chat template."
            )
        texts.append(tokenizer.apply_chat_template(row, tokenize=False))
    return texts
