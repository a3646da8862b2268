"""What a variant is measured by besides lm-eval: peak memory, held-out answer loss, step time."""

from __future__ import annotations

import threading
import time
from typing import Optional

from midblock_plugin.data import gsm8k


class PeakMemory:
    """Peak memory while a block runs: CUDA allocator peak, else sampled process RSS."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            proc = psutil.Process()
            self.peak = proc.memory_info().rss

            def sample():
                while not self._stop.wait(self.interval):
                    self.peak = max(self.peak, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
        self.kind = "cuda_max_allocated" if self.cuda else "process_rss"
        return False


def heldout_row_losses(
    model, tok, rows: list[dict], max_length: int = 256, progress: Optional[str] = None
) -> tuple[list[float], list[int]]:
    """Per held-out row: the summed token loss of its gold answer (the question is context only)
    and its number of answer tokens (0 for a row whose answer is cut off by ``max_length``).

    Rows keep their index, so two models measured on the same rows can be paired row by row.
    ``progress``: the title of a progress bar on stderr (none when ``None``)."""
    import torch

    from midblock_plugin.training.progress import bar

    was_training = model.training
    model.eval()
    sums: list[float] = []
    counts: list[int] = []
    device = next(model.parameters()).device
    with torch.no_grad(), bar(len(rows), progress, unit="row", disable=progress is None) as shown:
        for row in rows:
            shown.update(1)
            p_ids = tok(gsm8k.prompt(row), add_special_tokens=False)["input_ids"]
            full = tok(gsm8k.training_text(row), add_special_tokens=False)["input_ids"][:max_length]
            if len(full) <= len(p_ids):
                sums.append(0.0)
                counts.append(0)
                continue
            ids = torch.tensor([full], device=device)
            labels = ids.clone()
            labels[:, : len(p_ids)] = -100
            out = model(input_ids=ids, labels=labels)
            n = int((labels[:, 1:] != -100).sum())
            sums.append(float(out.loss) * n)
            counts.append(n)
    if was_training:
        model.train()
    return sums, counts


def heldout_answer_loss(model, tok, rows: list[dict], max_length: int = 256, batch_size: int = 8) -> float:
    """Mean token loss of the gold answers of held-out rows (the question is context only).

    A continuous measure that tells variants apart where GSM8K accuracy of a small model
    sits near zero."""
    sums, counts = heldout_row_losses(model, tok, rows, max_length=max_length)
    return sum(sums) / max(sum(counts), 1)


class StepTimer:
    """Wall time of every training step; pass :attr:`callback` to the trainer."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self

        class CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                outer._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                outer.times.append(time.perf_counter() - outer._t)

        self.times: list[float] = []
        self.callback = CB()

    @property
    def median(self) -> Optional[float]:
        if not self.times:
            return None
        s = sorted(self.times[1:] or self.times)  # the first step includes warm-up
        return s[len(s) // 2]
