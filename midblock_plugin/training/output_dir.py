"""One owner per trainer ``output_dir``: the lock and status record of ``midblock run``
(:class:`midblock_plugin.io.RunDirectory`) for the TRL / HF ``Trainer`` and Axolotl paths.

A training run (its :class:`~midblock_plugin.training.MidBlockCallback`) owns its ``output_dir``
from the start of ``trainer.train()`` to its end, in three steps:

* **checked** (:meth:`TrainingDirectory.check`: the callback at trainer init, the Axolotl plugin
  before the model loads; nothing is written): another run that holds the directory's lock
  (``.midblock.lock``) stops this one at once, named by pid and host; a directory whose
  previous midblock run was trained with another plan (its ``midblock/plan.json``: window,
  rank, mode, targets) is refused, naming both plans, unless ``overwrite``;
* **claimed** (:meth:`TrainingDirectory.claim`: when training starts; in Axolotl when the trainer
  is built, before Axolotl pre-saves its configs there): the lock is held, ``overwrite``
  removes the previous run's files (:data:`~midblock_plugin.io.TRAINER_ARTIFACTS`; other files
  stay) and ``midblock-run.json`` says ``running`` (pid, host, start, command line);
* **ended** (:meth:`TrainingDirectory.end`): ``complete`` when training ended normally (with
  ``MidBlockCallback.bind``: once the ``trainer.save_model`` after training returned, or at exit
  if none came), ``incomplete`` with the error otherwise. A process that dies keeps ``running`` with its pid,
  which :func:`~midblock_plugin.io.run_status` reads as ``incomplete``; one that exits
  normally with training unfinished records ``incomplete`` at exit.

A resume from a checkpoint inside ``output_dir`` is compared with that checkpoint's own plan
(:func:`~midblock_plugin.training.resume.check_resume`), is never refused for the directory and
never removes anything. A new run with the same plan as the previous one is accepted (its
files replace the old ones as they are saved). Only the main process (global rank 0) checks
and claims; the launcher stops the other ranks when it fails.

>>> guard = TrainingDirectory("runs/a", plan, overwrite=False)      # doctest: +SKIP
>>> guard.check()     # at trainer init: RunDirectoryError if refused  # doctest: +SKIP
>>> guard.claim()     # training starts                              # doctest: +SKIP
>>> guard.end()       # training ended: complete                     # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional

from midblock_plugin import io
from midblock_plugin.training.resume import describe_plan, plan_mismatches, saved_plan


logger = logging.getLogger("midblock_plugin")

#: How the errors name the overwrite switch on the TRL / HF Trainer path.
CALLBACK_OVERWRITE = "MidBlockCallback(overwrite=True)"
#: The status file's ``kind`` for a training run (``midblock run`` jobs have none).
KIND = "training"

#: Claims held by this process, by resolved output_dir (see :meth:`TrainingDirectory._take_over`).
_HELD: dict[str, "TrainingDirectory"] = {}


class TrainingDirectory:
    """The guard of one training run's ``output_dir``.

    ``overwrite``: remove the previous run's files when the run is claimed (never for a resume
    from a checkpoint inside ``output_dir``). ``overwrite_hint``: how the refusal names the
    switch (``MidBlockCallback(overwrite=True)``, ``midblock_overwrite: true``, ``--overwrite``).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        plan: Any,
        *,
        overwrite: bool = False,
        overwrite_hint: str = CALLBACK_OVERWRITE,
        log: Optional[Callable[[str], None]] = None,
    ):
        self.path = Path(output_dir)
        self.plan = plan
        self.overwrite = overwrite_switch(overwrite, overwrite_hint)
        self.overwrite_hint = overwrite_hint
        self.log = log or logger.warning
        self.run: io.RunDirectory | None = None
        #: the previous run's files that ``claim`` will remove (known after ``check``)
        self.pending_removal: list[str] = []
        #: training ended normally; the run is complete once its final model is saved
        self.trained = False

    @property
    def key(self) -> str:
        return str(self.path.resolve())

    @property
    def claimed(self) -> bool:
        return self.run is not None

    # ------------------------------------------------------------------ the previous run
    def _inside(self, checkpoint: Any) -> bool:
        if checkpoint is None:
            return False
        try:
            return Path(checkpoint).resolve().is_relative_to(self.path.resolve())
        except (OSError, ValueError):
            return False

    def _guard(self, resume: Any) -> io.RunDirectory:
        inside = self._inside(resume)
        return io.RunDirectory(
            self.path,
            overwrite=self.overwrite and not inside,
            artifacts=io.TRAINER_ARTIFACTS,
            overwrite_flag=self.overwrite_hint,
            elsewhere="another output_dir",
            log=self.log,
            # a resume from a checkpoint here is compared with the checkpoint's own plan (check_resume)
            check_previous=(lambda run, files: None) if inside else self._refusal,
        )

    def _refusal(self, run: io.RunDirectory, files: list) -> Optional[str]:
        """``None`` when the previous run in the directory has no recorded plan or the same plan."""
        saved, where = saved_plan(self.path)
        if saved is None:
            return None
        differences = plan_mismatches(saved, self.plan, what="there")
        if not differences:
            return None
        status = (run.previous or {}).get("status")
        kind = {io.COMPLETE: "a finished", io.INCOMPLETE: "an incomplete", io.RUNNING: "an unfinished"}.get(
            status, "a"
        )
        when = ""
        if run.previous and (run.previous.get("finished") or run.previous.get("started")):
            when = f" ({'finished' if status == io.COMPLETE else 'started'} "
            when += f"{run.previous.get('finished') if status == io.COMPLETE else run.previous.get('started')})"
        return (
            f"{self.path} holds {kind} midblock run{when} trained on {describe_plan(saved)}; this run's plan is "
            f"{describe_plan(self.plan.to_json_dict())} ({'; '.join(differences)}; recorded in {where}). Training "
            "here would mix this run's adapter, checkpoints and plan with that run's. To continue that run, train "
            f"with the settings it was trained with (its {where.name}); to replace it, set {self.overwrite_hint} "
            "(its files are removed first); or choose another output_dir."
        )

    def _acquire(self, resume: Any) -> io.RunDirectory:
        """The directory's lock, taken (refusals raise here): a claim of this process is ended first."""
        self._take_over()
        guard = self._guard(resume)
        guard.acquire()
        return guard

    # ------------------------------------------------------------------ the three steps
    def check(self, resume: Any = None) -> "TrainingDirectory":
        """Refuse (``RunDirectoryError``) a directory another run holds, or one whose previous run
        has another plan (unless ``overwrite``). Takes the lock only for the check."""
        if self.claimed:
            return self
        guard = self._acquire(resume)
        try:
            self.pending_removal = [p.name for p in guard.previous_files()] if guard.overwrite else []
        finally:
            guard.release()
        return self

    def claim(self, resume: Any = None, **info: Any) -> "TrainingDirectory":
        """Check again, hold the lock, remove the previous run's files (``overwrite``) and record
        ``running``. A second call is a no-op; ``overwrite`` applies to the first claim only."""
        if self.claimed:
            return self
        guard = self._acquire(resume)
        try:
            if resume is not None:
                info["resumed_from"] = str(resume)
            guard.start(kind=KIND, plan=describe_plan(self.plan.to_json_dict()), **info)
        except BaseException:
            guard.release()
            raise
        self.run, self.overwrite, self.pending_removal = guard, False, []
        _HELD[self.key] = self
        _register_exit()
        return self

    def end(self, error: BaseException | str | None = None) -> None:
        """``complete`` (``error`` ``None``) or ``incomplete`` with the error; releases the lock."""
        run, self.run = self.run, None
        if run is None:
            return
        if _HELD.get(self.key) is self:
            del _HELD[self.key]
        run.end(error)

    def _take_over(self) -> None:
        """A claim of this process on the same directory whose training never ended (an exception
        in ``trainer.train`` without :meth:`MidBlockCallback.bind`, or an abandoned trainer): this
        process is building a new one, so that training is over; it is recorded ``incomplete``."""
        other = _HELD.get(self.key)
        if other is not None and other is not self:
            other.end(
                "training did not end (an exception in trainer.train, or the trainer was abandoned) before "
                "another trainer in the same process started into this output_dir"
            )


def overwrite_switch(value: Any, hint: str = CALLBACK_OVERWRITE) -> bool:
    """``value`` as the overwrite switch: ``True`` or ``False`` only (``"no"`` must not replace a run)."""
    if not isinstance(value, bool):
        raise ValueError(
            f"overwrite={value!r}: must be True or False ({hint} replaces a previous run with another plan)."
        )
    return value


def main_process() -> bool:
    """Global rank 0 by the launcher's ``RANK`` (torchrun, ``accelerate launch``, ``deepspeed``); a
    single process has none. For checks that run before the trainer (which knows its own rank)."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


_EXIT_REGISTERED = False


def _register_exit() -> None:
    global _EXIT_REGISTERED
    if not _EXIT_REGISTERED:
        _EXIT_REGISTERED = True
        atexit.register(_end_at_exit)


def _end_at_exit() -> None:
    """At interpreter exit, a claim whose training never ended is recorded ``incomplete``; one whose
    training ended and that saved no final model after it (checkpoints only) is ``complete``."""
    for guard in list(_HELD.values()):
        try:
            if guard.trained:
                guard.end()
            else:
                guard.end("the process exited before training ended (an exception or an exit during trainer.train)")
        except Exception:  # noqa: BLE001 - at exit: a status that cannot be written reads as stale later
            pass
