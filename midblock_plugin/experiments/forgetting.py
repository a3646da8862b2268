"""Forgetting: how far tuning moved the model on general text it was not tuned on.

Two numbers per tuned model, base vs tuned on the same token blocks of general text:

* ``delta_loss``: the change in mean next-token loss (tuned minus base; > 0 = worse on general text);
* ``kl``: the mean over predicted tokens of ``KL(p_base || p_tuned)`` between the two models'
  next-token distributions (0 exactly when the two models agree; does not need the text's own
  next token to be right, so it also sees changes the loss averages away).

Both are also kept per block, so a sweep can put intervals on them (:mod:`.stats`).

The general text (:func:`general_text`):

* default ``"python-docs"``: the English reference prose that ships inside every CPython
  install, ``pydoc_data.topics.topics`` (the text ``help("if")`` prints: ~80 topics of the
  language reference, about 0.5 MB). Present on every machine with Python, identical for a
  given Python version, needs no download, and it is not GSM8K-like (no arithmetic word
  problems). It is technical English with some code; it is not a general web corpus.
* a path (``--general-text FILE``): any UTF-8 text file of your own.
* ``"wikitext"``: WikiText-2 (raw, test split), the data of lm-eval's ``wikitext`` task, read
  through ``datasets`` from the hub (``EleutherAI/wikitext_document_level``); only where the hub
  is reachable.

``num_blocks`` blocks of ``block_tokens`` tokens are taken at evenly spaced places of the
whole text (so every part of the corpus is represented, and the choice is deterministic);
only the text around each place is tokenized.

For a PEFT model the base distribution is the same model with its adapter disabled
(:func:`measure` with ``base=None``), so no second copy of the weights is held.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Optional, Union


DEFAULT = "python-docs"
WIKITEXT = "wikitext"
#: What ``--general-text`` accepts besides a file.
NAMED = (DEFAULT, WIKITEXT)
WIKITEXT_DATASET = ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "test")
#: Characters a general-text file must hold at least (a few blocks' worth).
MIN_CHARS = 2000


def check_source(source: Optional[Union[str, os.PathLike]], flag: str = "--general-text") -> str:
    """``source`` normalised (``None`` -> the default); a file is checked to exist, decode as UTF-8
    and hold at least :data:`MIN_CHARS` characters. Cheap: called before any model loads."""
    if source is None or str(source) == DEFAULT:
        return DEFAULT
    if str(source) == WIKITEXT:
        return WIKITEXT
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{flag} {str(source)!r}: no such file; give a UTF-8 text file, '{DEFAULT}' "
            f"(Python's own English docs, the default) or '{WIKITEXT}' (needs the hub)."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{flag} {str(source)!r}: not UTF-8 text ({exc.reason} at byte {exc.start}); give a UTF-8 text file."
        ) from None
    if len(text.strip()) < MIN_CHARS:
        raise ValueError(
            f"{flag} {str(source)!r}: holds {len(text.strip())} characters; give at least {MIN_CHARS} "
            "characters of text so the measure has several blocks."
        )
    return str(path.resolve())


def general_text(source: Optional[str] = None) -> tuple[str, str]:
    """``(text, description)`` of a checked ``source`` (see :func:`check_source`)."""
    source = check_source(source)
    if source == DEFAULT:
        import sys
        from pydoc_data.topics import topics

        text = "\n\n".join(topics[k].strip() for k in sorted(topics))
        return text, (
            f"Python {sys.version_info.major}.{sys.version_info.minor}'s English reference docs "
            "(pydoc_data.topics, shipped with Python)"
        )
    if source == WIKITEXT:
        try:
            from datasets import load_dataset

            ds = load_dataset(*WIKITEXT_DATASET[:2], split=WIKITEXT_DATASET[2])
        except Exception as exc:  # offline or refused
            raise FileNotFoundError(
                f"--general-text {WIKITEXT}: {WIKITEXT_DATASET[0]} could not be loaded from the hub "
                f"({type(exc).__name__}); use the default '{DEFAULT}' or --general-text FILE."
            ) from None
        return "\n\n".join(
            r["page"] for r in ds
        ), f"WikiText-2 raw test ({WIKITEXT_DATASET[0]}, lm-eval's wikitext data)"
    return Path(source).read_text(encoding="utf-8"), f"the file {source}"


def blocks(tok, text: str, block_tokens: int = 128, num_blocks: int = 32) -> list[list[int]]:
    """``num_blocks`` blocks of ``block_tokens`` token ids, starting at evenly spaced places of ``text``
    (each at the start of a paragraph or word). Only the text around each start is tokenized."""
    n = len(text)
    starts = []
    for i in range(num_blocks):
        at = round(i * n / num_blocks)
        para = text.find("\n\n", at, at + 4000)
        at = para + 2 if para >= 0 else (text.find(" ", at) + 1 if text.find(" ", at) >= 0 else at)
        if at < n and (not starts or at > starts[-1]):
            starts.append(at)
    out: list[list[int]] = []
    for at in starts:
        span = block_tokens * 8
        while True:
            ids = tok(text[at : at + span], add_special_tokens=False, verbose=False)["input_ids"]
            if len(ids) > block_tokens or at + span >= n:
                break
            span *= 2
        if len(ids) >= block_tokens:
            out.append(ids[:block_tokens])
    if not out:
        raise ValueError(f"the general text holds fewer than {block_tokens} tokens; give more text.")
    return out


@contextlib.contextmanager
def _adapter_disabled(model):
    with model.disable_adapter():
        yield model


def block_losses(model, blocks_: list[list[int]], batch_size: int = 4, progress: Optional[str] = None) -> list[float]:
    """Mean next-token loss of ``model`` on each block (one model, one pass). ``progress``: the
    title of a progress bar on stderr (none when ``None``)."""
    import torch

    from midblock_plugin.training.progress import bar

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[float] = []
    with torch.no_grad(), bar(len(blocks_), progress, unit="block", disable=progress is None) as shown:
        for i in range(0, len(blocks_), batch_size):
            shown.update(len(blocks_[i : i + batch_size]))
            ids = torch.tensor(blocks_[i : i + batch_size], device=device)
            lp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), dim=-1)
            out += (-lp.gather(-1, ids[:, 1:].unsqueeze(-1))).squeeze(-1).mean(dim=1).tolist()
    if was_training:
        model.train()
    return out


def measure(
    tuned, blocks_: list[list[int]], base=None, batch_size: int = 4, progress: Optional[str] = None
) -> dict[str, Any]:
    """Base vs tuned on ``blocks_`` (lists of token ids of equal length).

    ``base``: the untouched model; ``None`` means ``tuned`` is a PEFT model whose base is
    ``tuned`` with its adapter disabled. Returns ``loss_base``, ``loss_tuned``, ``delta_loss``,
    ``kl`` (means over predicted tokens) and their per-block values (``per_block``).
    ``progress``: the title of a progress bar on stderr (none when ``None``)."""
    import torch

    from midblock_plugin.training.progress import bar

    peft_base = base is None
    if peft_base and not hasattr(tuned, "disable_adapter"):
        raise ValueError("forgetting.measure: give base= for a model without a PEFT adapter.")
    device = next(tuned.parameters()).device
    was_training = tuned.training
    tuned.eval()
    if base is not None:
        base.eval()
    per = {"loss_base": [], "loss_tuned": [], "kl": []}
    with torch.no_grad(), bar(len(blocks_), progress, unit="block", disable=progress is None) as shown:
        for i in range(0, len(blocks_), batch_size):
            shown.update(len(blocks_[i : i + batch_size]))
            ids = torch.tensor(blocks_[i : i + batch_size], device=device)
            with _adapter_disabled(tuned) if peft_base else contextlib.nullcontext(base) as b:
                lp_b = torch.log_softmax(b(input_ids=ids).logits[:, :-1].float(), dim=-1)
            lp_t = torch.log_softmax(tuned(input_ids=ids).logits[:, :-1].float(), dim=-1)
            target = ids[:, 1:].unsqueeze(-1)
            per["loss_base"] += (-lp_b.gather(-1, target)).squeeze(-1).mean(dim=1).tolist()
            per["loss_tuned"] += (-lp_t.gather(-1, target)).squeeze(-1).mean(dim=1).tolist()
            # KL(base || tuned) per position, clamped at 0 against rounding
            kl = (lp_b.exp() * (lp_b - lp_t)).sum(-1).clamp_min(0.0)
            per["kl"] += kl.mean(dim=1).tolist()
            del lp_b, lp_t, kl
    if was_training:
        tuned.train()
    per["delta_loss"] = [t - b for t, b in zip(per["loss_tuned"], per["loss_base"])]
    out = {k: sum(v) / len(v) for k, v in per.items()}
    out["blocks"] = len(blocks_)
    out["block_tokens"] = len(blocks_[0]) if blocks_ else 0
    out["per_block"] = per
    return out
