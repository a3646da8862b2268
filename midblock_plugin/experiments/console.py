"""The console of ``midblock run`` / ``compare`` / ``sweep``: what the libraries may print while a
job runs (:func:`job_console`), and the one line per stage the job prints itself (:func:`stage`).

The job shows a progress bar while a stage runs (tqdm on stderr, see
:func:`midblock_plugin.training.progress.bar`) and prints one line with its result, and one short line per
training step (:class:`~midblock_plugin.training.progress.ConsoleProgress`). Library output that
says nothing a user of the job can act on is turned off or filtered for the job's duration only:

* transformers' "Loading weights" / "Writing model shards" bars (one per model load and save,
  each under a second) and the ``datasets`` bars of TRL's preprocessing ("Tokenizing train
  dataset", ... five per variant) and lm-eval's data loading ("Generating train split");
  downloads from the hub keep their bars;
* PEFT's call of transformers' deprecated ``is_gradient_checkpointing`` (a ``FutureWarning`` about
  code in those libraries, not in the user's);
* DeepSpeed's import-time "Setting accelerator to CPU. If you have GPU or other accelerator, we
  were unable to detect it." warning: the job prints the device it trains on once instead.

lm-eval's own messages are filtered in :mod:`midblock_plugin.evaluation.runner` (every evaluation
path uses it, not only the job).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from typing import Callable, Iterator


#: The DeepSpeed logger and the start of its import-time accelerator warning.
DEEPSPEED_LOGGER = "DeepSpeed"
DEEPSPEED_CPU_WARNING = "Setting accelerator to CPU"


class _DropMessage(logging.Filter):
    """Drop the records of one logger whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefix)


def device_line() -> str:
    """Where the job trains, in words."""
    import torch

    if torch.cuda.is_available():
        return f"device: CUDA ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} visible)"
    return "device: CPU (no CUDA GPU found)"


@contextlib.contextmanager
def _library_bars_off() -> Iterator[None]:
    """transformers' and datasets' progress bars off (hub downloads keep theirs); restored on exit."""
    from transformers.utils import logging as hf_logging

    restore: list[Callable[[], None]] = []
    if hf_logging.is_progress_bar_enabled():
        import huggingface_hub.utils as hub

        hub_off = hub.are_progress_bars_disabled()
        hf_logging.disable_progress_bar()  # also turns the hub's off: turned back on just below
        if not hub_off:
            hub.enable_progress_bars()
        restore.append(hf_logging.enable_progress_bar)
        if hub_off:
            restore.append(hub.disable_progress_bars)
    if "HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ:  # the variable has priority: left to it
        import datasets

        if datasets.is_progress_bar_enabled():
            datasets.disable_progress_bars()
            restore.append(datasets.enable_progress_bars)
    try:
        yield
    finally:
        for undo in restore:
            undo()


@contextlib.contextmanager
def job_console(log: Callable[[str], None]) -> Iterator[None]:
    """For the duration of a job: the library output listed in the module docstring off, and the
    device the job trains on said once (``log``)."""
    deepspeed = logging.getLogger(DEEPSPEED_LOGGER)
    dropped = _DropMessage(DEEPSPEED_CPU_WARNING)
    deepspeed.addFilter(dropped)  # kept by DeepSpeed's create_logger, which only adds a handler
    log(device_line())
    try:
        with _library_bars_off(), warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
            )
            yield
    finally:
        deepspeed.removeFilter(dropped)


@contextlib.contextmanager
def stage(log: Callable[[str], None]) -> Iterator[Callable[[str], None]]:
    """Time a stage; the caller hands its result sentence to the function yielded, and ``log``
    prints it with the seconds the stage took when the stage ends (a progress bar shows the stage
    while it runs)."""
    said: list[str] = []
    t0 = time.perf_counter()
    yield said.append
    for sentence in said:
        log(f"{sentence} ({time.perf_counter() - t0:.1f} s)")
