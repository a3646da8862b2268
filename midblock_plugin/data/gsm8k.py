"""GSM8K: the one place that knows where the data is, how to read it and how a row is shown.

Where: an explicit directory (``--data-dir`` / ``data_dir=``) first, then the one
environment variable ``MIDBLOCK_GSM8K_DIR``, then the hub (``openai/gsm8k``, ``main``).
A GSM8K directory holds ``train.jsonl`` and ``test.jsonl``, one JSON object per line with
``question`` and ``answer`` keys (the answer ends in ``#### N``).

How a row is shown: the paper's and lm-eval's ``"Question: ...\\nAnswer:"`` prompt, and for
training the same text followed by the answer.

>>> prompt({"question": "What is 2+2?", "answer": "2+2=4 #### 4"})
'Question: What is 2+2?\\nAnswer:'
>>> training_text({"question": "What is 2+2?", "answer": "2+2=4 #### 4"})
'Question: What is 2+2?\\nAnswer: 2+2=4 #### 4'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable


#: The environment variable naming a local GSM8K directory.
ENV = "MIDBLOCK_GSM8K_DIR"
#: ``data_dir`` value that forces the hub dataset even when a local copy is configured.
HUB = "hub"
#: The hub dataset (path, name) used when no local copy is given.
HUB_DATASET = ("openai/gsm8k", "main")
SPLITS = ("train", "test")


def prompt(row: dict) -> str:
    """The ``"Question: ...\\nAnswer:"`` prompt of a GSM8K row (lm-eval's and the paper's)."""
    return f"Question: {row['question'].strip()}\nAnswer:"


def training_text(row: dict) -> str:
    """The text a GSM8K row is trained on: the prompt, a space, and the gold answer."""
    return f"{prompt(row)} {row['answer'].strip()}"


def locate(data_dir: str | os.PathLike | None = None, option: str = "data_dir") -> Path | None:
    """The local GSM8K directory to use: ``data_dir`` if given (checked), else
    ``$MIDBLOCK_GSM8K_DIR`` (checked), else ``None`` (use the hub). ``data_dir="hub"``
    forces the hub. ``option`` is how the user spelled ``data_dir`` (for messages)."""
    if data_dir is not None and str(data_dir) == HUB:
        return None
    if data_dir is not None:
        return check_dir(data_dir, option)
    env = os.environ.get(ENV)
    if env:
        return check_dir(env, option=ENV)
    return None


def check_dir(data_dir: str | os.PathLike, option: str = "data_dir") -> Path:
    """Return ``data_dir`` resolved, or raise ``FileNotFoundError`` / ``ValueError``
    explaining what a GSM8K directory must contain (the first row of each split is read)."""
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{option}={str(data_dir)!r} is not a directory. Give a directory holding GSM8K's "
            "train.jsonl (few-shot examples) and test.jsonl (scored rows), one JSON object per line "
            f"with 'question' and 'answer' keys; or {option}='{HUB}' to download openai/gsm8k."
        )
    missing = [f"{s}.jsonl" for s in SPLITS if not (path / f"{s}.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{option}={str(data_dir)!r} lacks {' and '.join(missing)}. A GSM8K directory needs "
            "train.jsonl (few-shot examples) and test.jsonl (scored rows), one JSON object per line "
            "with 'question' and 'answer' keys (the layout of openai/gsm8k 'main')."
        )
    for split in SPLITS:
        file = path / f"{split}.jsonl"
        with open(file, encoding="utf-8") as fh:
            first = next((line for line in fh if line.strip()), None)
        if first is None:
            raise ValueError(f"{option}: {file} is empty; it needs GSM8K rows with 'question' and 'answer'.")
        _parse(first, file, 1, option)
    return path.resolve()


def _parse(line: str, file: Path, lineno: int, option: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{option}: {file}:{lineno} is not JSON ({exc}); expected JSON Lines.") from None
    if not isinstance(row, dict) or not {"question", "answer"} <= set(row):
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise ValueError(
            f"{option}: {file}:{lineno}: rows need 'question' and 'answer' keys (GSM8K 'main' layout); got {keys}."
        )
    return row


def read_rows(split: str = "train", n: int | None = None, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """The first ``n`` rows (all with ``None``) of a local GSM8K split; every line read is
    parsed and checked, and an error names the file and line."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {', '.join(SPLITS)}.")
    where = locate(data_dir)
    if where is None:
        raise FileNotFoundError(
            f"no local GSM8K directory: pass data_dir / --data-dir DIR, or set {ENV}, to a directory "
            "holding train.jsonl and test.jsonl."
        )
    file = where / f"{split}.jsonl"
    rows: list[dict] = []
    with open(file, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                rows.append(_parse(line, file, lineno, "data_dir"))
                if n is not None and len(rows) >= n:
                    break
    return rows


def load(
    data_dir: str | os.PathLike | None = None, log: Callable[[str], None] = print
) -> tuple[list[dict], list[dict], str]:
    """``(train rows, test rows, source)`` from the local directory :func:`locate` finds,
    else from the hub."""
    where = locate(data_dir)
    if where is not None:
        return read_rows("train", data_dir=where), read_rows("test", data_dir=where), str(where)
    try:
        from datasets import load_dataset

        log(f"midblock: no local GSM8K given ({ENV} unset); loading {HUB_DATASET[0]} from the hub ...")
        ds = load_dataset(*HUB_DATASET)
        return list(ds["train"]), list(ds["test"]), f"hub:{HUB_DATASET[0]}"
    except Exception as exc:  # offline, or the hub refused
        raise FileNotFoundError(
            f"GSM8K: no local copy given and the hub is unreachable ({type(exc).__name__}); pass --data-dir DIR "
            f"(or set {ENV}) with train.jsonl and test.jsonl (question/answer rows)."
        ) from None
