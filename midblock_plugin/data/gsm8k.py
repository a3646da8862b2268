"""GSM8K: the one place that knows where the data is, how to read it and how a row is shown.

Where: an explicit directory (``--data-dir`` / ``data_dir=``) first, then the one
environment variable ``MIDBLOCK_GSM8K_DIR``, then the hub (``openai/gsm8k``, ``main``).
Whether the hub can serve it (online, or a cached copy under ``HF_HUB_OFFLINE`` /
``HF_DATASETS_OFFLINE``) is known before any work: :func:`require_source`.
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

import functools
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


#: The environment variables that keep ``datasets`` / ``huggingface_hub`` off the network.
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def offline_vars() -> list[str]:
    """The offline switches set in the environment (``HF_HUB_OFFLINE=1``, ...), as written there."""
    return [
        f"{v}={os.environ[v]}"
        for v in OFFLINE_ENV
        if os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
    ]


def _unreachable(timeout: float = 5.0) -> str | None:
    """Why the hub's endpoint does not answer one HTTP request (proxies from the environment
    honoured), or ``None`` when it answers at all: a quick probe before ``datasets`` retries for
    half a minute."""
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as exc:
        return f"{endpoint} does not answer ({getattr(exc, 'reason', None) or exc})"
    return None


@functools.lru_cache(maxsize=4)
def _hub_problem(offline: tuple[str, ...]) -> str | None:
    probe = None if offline else _unreachable()  # offline: only the cache counts
    try:
        if probe is not None:
            raise ConnectionError(probe)
        from datasets import load_dataset

        load_dataset(*HUB_DATASET)  # offline: from the datasets cache; online: fetched once into it
    except Exception as exc:  # noqa: BLE001 - any failure means the evaluation would fail the same way
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        if offline:
            return (
                f"{' and '.join(offline)} {'is' if len(offline) == 1 else 'are'} set (no network) and the Hugging Face datasets cache holds no copy of "
                f"{HUB_DATASET[0]} ({type(exc).__name__}: {first})"
            )
        return (
            f"the hub is unreachable ({type(exc).__name__}: {first}; a copy in the Hugging Face datasets cache is "
            "read with HF_DATASETS_OFFLINE=1)"
        )
    return None


def hub_problem() -> str | None:
    """Why GSM8K cannot come from the hub now (``None``: it can): the offline switches are set and
    no cached copy exists, or the hub does not answer. Found by loading ``openai/gsm8k`` as
    lm-eval and the authors' protocol do (so a copy fetched here is the one they read); asked
    once per process and offline setting."""
    return _hub_problem(tuple(offline_vars()))


def require_source(
    data_dir: str | os.PathLike | None = None,
    option: str = "data_dir",
    needs: str = "this",
    fix: str = "",
) -> Path | None:
    """The local GSM8K directory :func:`locate` finds (checked), or ``None`` when the hub will serve
    GSM8K; a ``FileNotFoundError`` when neither can (no local copy, and offline or the hub
    unreachable: :func:`hub_problem`). ``option``: how the caller spells ``data_dir``; ``needs``:
    what wants the data (for the message); ``fix``: another way out, appended."""
    where = locate(data_dir, option)
    if where is not None:
        return where
    problem = hub_problem()
    if problem is None:
        return None
    raise FileNotFoundError(
        f"{needs} needs GSM8K, which cannot be found: no local copy is given ({option} DIR, or ${ENV}) and "
        f"{problem}. Give {option} a directory holding GSM8K's train.jsonl and test.jsonl"
        + (f", or {fix}" if fix else "")
        + "."
    )


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
