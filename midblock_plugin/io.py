"""Where every output file is written, and how: artifact names, JSON-safe values, atomic writes.

A run directory (a trainer's ``output_dir``, or ``midblock run --output-dir``) holds:

==============================  ==================================================
``midblock/plan.json``          the plan of the run (:data:`PLAN_JSON`)
``midblock/drift.json`` + .png  per-layer drift during training (:data:`DRIFT_JSON`)
``eval/<task>.json``            lm-eval results (:data:`EVAL_SUBDIR`); ``eval/error.json`` on failure
``analysis/analysis.json``      the layer-wise analysis (+ ``.csv``, ``.png``)
``report.md``, ``results.json`` the main job's report and its numbers
``loss_curves.png``, ``drift.png``, ``heldout_loss.png``, ``gain_vs_forgetting.png``, ``paired_differences.png`` the main job's figures (``JOB_*_PNG``)
``base/``, ``variant-<mask>/``  the job's untrained baseline and one trainer ``output_dir`` per variant
``midblock-run.json``           the job's status: running / complete / incomplete (:data:`RUN_STATUS_JSON`)
``.midblock.lock``              held (``flock``) while a job runs in the directory (:data:`RUN_LOCK`)
==============================  ==================================================

A trainer's ``output_dir`` (TRL, HF ``Trainer``, Axolotl) gets the same ``midblock-run.json`` and
``.midblock.lock`` while ``MidBlockCallback`` trains there
(:class:`midblock_plugin.training.output_dir.TrainingDirectory`); what such a run writes is
:data:`TRAINER_ARTIFACTS`.

Every JSON file is written atomically (a temporary file, then ``os.replace``), so a
reader never sees half a file, and with NaN / infinity written as ``null``.

A job's directory is guarded by :class:`RunDirectory`: one run at a time (a lock), never
over a previous run's files unless asked (``overwrite``, which removes them first), and a
status file that says ``complete`` only once the run's last file is written.

>>> json_safe({"a": float("nan"), "b": (1, 2.5)})
{'a': None, 'b': [1, 2.5]}
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import math
import os
import shlex
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional


#: The subdirectory of a run directory that holds midblock's own training artifacts.
RUN_SUBDIR = "midblock"
PLAN_JSON = f"{RUN_SUBDIR}/plan.json"
DRIFT_JSON = f"{RUN_SUBDIR}/drift.json"
DRIFT_PNG = f"{RUN_SUBDIR}/drift.png"
#: lm-eval results: ``<run>/eval/<task>.json`` (``<task>.<label>.json`` for a baseline).
EVAL_SUBDIR = "eval"
ANALYSIS_JSON = "analysis.json"
ANALYSIS_CSV = "analysis.csv"
ANALYSIS_PNG = "analysis.png"
REPORT_MD = "report.md"
RESULTS_JSON = "results.json"
#: The main job's figures (``midblock run`` / ``compare``), at the top of its directory.
JOB_LOSS_PNG = "loss_curves.png"
JOB_DRIFT_PNG = "drift.png"
JOB_HELDOUT_PNG = "heldout_loss.png"
JOB_TRADEOFF_PNG = "gain_vs_forgetting.png"
JOB_PAIRED_PNG = "paired_differences.png"
#: The job's untrained baseline (its lm-eval results), its analysis, and one directory per variant.
BASE_SUBDIR = "base"
ANALYSIS_SUBDIR = "analysis"
VARIANT_PREFIX = "variant-"
#: The job's status file (``running`` / ``complete`` / ``incomplete``) and its lock file.
RUN_STATUS_JSON = "midblock-run.json"
RUN_LOCK = ".midblock.lock"
#: Everything a job writes at the top of its directory (glob patterns): a previous run's
#: files, which :class:`RunDirectory` refuses to mix with, and removes on ``overwrite``.
#: (``.*.tmp``: what an atomic write leaves when its process is killed.) Other files are left alone.
JOB_ARTIFACTS = (
    RUN_STATUS_JSON,
    REPORT_MD,
    RESULTS_JSON,
    JOB_LOSS_PNG,
    JOB_DRIFT_PNG,
    JOB_HELDOUT_PNG,
    JOB_TRADEOFF_PNG,
    JOB_PAIRED_PNG,
    BASE_SUBDIR,
    ANALYSIS_SUBDIR,
    f"{VARIANT_PREFIX}*",
    RUN_SUBDIR,
    EVAL_SUBDIR,
    ".*.tmp",
)
#: What a training run (TRL / HF ``Trainer`` / Axolotl with ``MidBlockCallback``) writes at the top of
#: its ``output_dir``: midblock's files, the checkpoints, the saved adapter or model and its config,
#: lm-eval results, Axolotl's ``merged/``. A previous run's are removed when a run overwrites the
#: directory; tokenizer files and anything else are left alone.
TRAINER_ARTIFACTS = (
    RUN_STATUS_JSON,
    RUN_SUBDIR,
    EVAL_SUBDIR,
    "checkpoint-*",
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "config.json",
    "generation_config.json",
    "training_args.bin",
    "trainer_state.json",
    "README.md",
    "merged",
    ".*.tmp",
)

#: The one environment variable for midblock's cache (converted models, generated lm-eval tasks).
CACHE_ENV = "MIDBLOCK_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    """``$MIDBLOCK_CACHE_DIR/<parts>`` (default ``~/.cache/midblock/<parts>``)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "midblock")
    return Path(root).expanduser().joinpath(*parts)


def artifact(run_dir: str | os.PathLike, name: str) -> Path:
    """The path of artifact ``name`` (e.g. :data:`PLAN_JSON`) inside a run directory."""
    return Path(run_dir) / name


def json_safe(obj: Any) -> Any:
    """Plain JSON values: numpy / torch scalars and arrays become numbers and lists,
    NaN / infinity (and lm-eval's ``"N/A"`` stderr is left as a string) become ``None``,
    paths become strings, tuples and sets become lists."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(obj, "shape", None) in ((), None):
        try:
            return json_safe(item())
        except (TypeError, ValueError):
            pass
    if hasattr(obj, "tolist"):
        return json_safe(obj.tolist())
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return json_safe(obj.to_dict())
    return str(obj)


def to_json(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (see :func:`json_safe`)."""
    return json.dumps(json_safe(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory
    (:func:`midblock_plugin.storage.write_bytes_atomic`: one-line error, nothing partial left)."""
    from midblock_plugin.storage import write_bytes_atomic

    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict, indented JSON to ``path``, atomically."""
    return write_text_atomic(path, to_json(obj) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Any) -> Path:
    """Write one JSON object per line, atomically."""
    return write_text_atomic(path, "".join(to_json(r, indent=None) + "\n" for r in rows))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_window_file(path: str | os.PathLike) -> dict[str, Any]:
    """The recommendation of a ``midblock analyze`` JSON (``window_from`` / ``--window-from``).

    The file must hold ``{"recommendation": {"layers": [...], ...}}``; the layers and the
    layer count they were computed for are returned. Errors are
    :class:`~midblock_plugin.window.WindowOptionError` about ``window_from``.
    """
    from midblock_plugin.window import WindowOptionError

    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise WindowOptionError(
            "window_from", str(path), ": no such file; give the JSON written by 'midblock analyze'"
        ) from None
    except json.JSONDecodeError as exc:
        raise WindowOptionError("window_from", str(path), f"is not valid JSON ({exc})") from None
    rec = data.get("recommendation") if isinstance(data, dict) else None
    if not isinstance(rec, dict) or "layers" not in rec:
        raise WindowOptionError(
            "window_from",
            str(path),
            "has no 'recommendation.layers' entry; give the JSON written by 'midblock analyze' (analysis.json)",
        )
    if rec.get("refused"):
        raise WindowOptionError("window_from", str(path), f"recommends no window: {rec['refused']}")
    return rec


# ---------------------------------------------------------------------------- run directories
RUNNING, COMPLETE, INCOMPLETE = "running", "complete", "incomplete"


class RunDirectoryError(ValueError):
    """A run directory that cannot be used now: another run holds it, or it holds a previous run."""


#: ``check_previous(run, files)`` of :class:`RunDirectory`: ``None`` accepts the previous run's
#: ``files`` (they stay), a message refuses the directory.
PreviousCheck = Callable[["RunDirectory", list], Optional[str]]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def pid_alive(pid: Any) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


def run_status(run_dir: str | os.PathLike) -> Optional[dict]:
    """The job status of ``run_dir`` (:data:`RUN_STATUS_JSON`), ``None`` without a status file.

    ``status`` is ``running``, ``complete`` or ``incomplete``; a ``running`` status whose
    process is gone (same host, pid not alive) reads as ``incomplete`` (``"stale": true``),
    and an unreadable status file as ``incomplete`` too."""
    path = Path(run_dir) / RUN_STATUS_JSON
    if not path.exists():
        return None
    try:
        doc = read_json(path)
        if not isinstance(doc, dict) or doc.get("status") not in (RUNNING, COMPLETE, INCOMPLETE):
            raise ValueError("no status")
    except (OSError, ValueError) as exc:
        return {"status": INCOMPLETE, "error": f"unreadable {RUN_STATUS_JSON} ({type(exc).__name__})"}
    if doc["status"] == RUNNING and doc.get("host") in (None, socket.gethostname()) and not pid_alive(doc.get("pid")):
        doc = {
            **doc,
            "status": INCOMPLETE,
            "stale": True,
            "error": doc.get("error") or f"the process (pid {doc.get('pid')}) ended without finishing the run",
        }
    return doc


def _lock(fd: int) -> None:
    """Take an exclusive, non-blocking lock on ``fd``; ``BlockingIOError`` when another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover  (Windows)
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            raise BlockingIOError(errno.EWOULDBLOCK, str(exc)) from None
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise BlockingIOError(exc.errno, str(exc)) from None
        raise


class RunDirectory:
    """The guard of one job's output directory; a context manager.

    ``with RunDirectory(out, overwrite=False) as run:`` takes an exclusive lock on
    ``<out>/.midblock.lock`` (non-blocking: a second concurrent run fails at once, naming
    the directory and the other run's pid) and refuses a directory that holds a previous
    run's files (any of ``artifacts``: a finished run, an incomplete one, or files of a run
    without a status file) unless ``overwrite``; ``check_previous`` replaces that rule (it
    returns ``None`` to keep and accept the files, or the refusal). Nothing is written yet,
    so checks that can still fail (e.g. the data) go here. ``run.start()`` then removes the
    previous run's files (``overwrite``) and marks the run ``running`` (pid, host, start
    time, command line). On leaving the block the status becomes ``complete`` (with what
    :meth:`finish` recorded), or ``incomplete`` with the error (an exception, or
    ``KeyboardInterrupt``) after a started run failed; the lock is released either way
    (:meth:`end` does the same outside a ``with`` block). A run killed outright stays
    ``running`` with a dead pid, which :func:`run_status` reads as ``incomplete``.

    Files that are not a run's (not in ``artifacts``) are never removed and never block.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        command: Optional[Iterable[str]] = None,
        artifacts: Iterable[str] = JOB_ARTIFACTS,
        overwrite_flag: str = "--overwrite",
        elsewhere: str = "another --output-dir",
        log: Optional[Callable[[str], None]] = None,
        check_previous: Optional[PreviousCheck] = None,
    ):
        if not str(path).strip():
            raise RunDirectoryError("the output directory is empty; give a directory, e.g. --output-dir runs/first.")
        self.path = Path(path)
        self.overwrite = bool(overwrite)
        self.command = list(sys.argv if command is None else command)
        self.artifacts = tuple(artifacts)
        self.overwrite_flag = overwrite_flag
        self.elsewhere = elsewhere
        self.log = log
        self.check_previous = check_previous
        self.status_path = self.path / RUN_STATUS_JSON
        self.lock_path = self.path / RUN_LOCK
        self.previous: Optional[dict] = None
        self.info: dict[str, Any] = {}
        self._fd: Optional[int] = None
        self._status: Optional[dict] = None

    # ------------------------------------------------------------ the previous run
    def previous_files(self) -> list[Path]:
        """The entries of the directory that a previous run wrote (matches of ``artifacts``)."""
        if not self.path.is_dir():
            return []
        found: dict[str, Path] = {}
        for pattern in self.artifacts:
            for p in self.path.glob(pattern):
                if p.name != RUN_LOCK:
                    found[p.name] = p
        return [found[k] for k in sorted(found)]

    def _refusal(self, files: list[Path]) -> str:
        how = f"Pass {self.overwrite_flag} to remove its files and run again there, or choose {self.elsewhere}."
        st = self.previous
        if st is None:
            names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in files[:6]) + (
                ", ..." if len(files) > 6 else ""
            )
            return (
                f"{self.path} holds files of an earlier midblock run ({names}) and no {RUN_STATUS_JSON} saying "
                f"whether it finished. {how}"
            )
        if st["status"] == COMPLETE:
            when = f" (finished {st['finished']})" if st.get("finished") else ""
            return (
                f"{self.path} already holds a finished midblock run{when}; a new run would replace its report. {how}"
            )
        why = st.get("error") or "it did not finish"
        if st["status"] == RUNNING:  # a live pid that holds no lock: another host, or a reused pid
            why = (
                f"it is marked running by pid {st.get('pid')} on {st.get('host')}, which holds no lock "
                "(killed, or running on another machine)"
            )
        when = f" (started {st['started']})" if st.get("started") else ""
        return f"{self.path} holds an incomplete midblock run{when}: {why}. Its files may not match each other. {how}"

    # ------------------------------------------------------------ lock
    def _holder(self) -> str:
        try:
            text = self.lock_path.read_text(encoding="utf-8").split()
        except OSError:
            text = []
        pid, host = (text[0], text[1] if len(text) > 1 else None) if text else (None, None)
        if pid is None:
            st = run_status(self.path)
            if st and st.get("status") == RUNNING:
                pid, host = st.get("pid"), st.get("host")
        if not pid:
            return "pid unknown"
        return f"pid {pid}" + (f" on {host}" if host else "")

    def acquire(self) -> "RunDirectory":
        """Lock the directory (creating it) and check it holds no previous run (unless ``overwrite``)."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(f"{self.path} is a file, not a directory; choose {self.elsewhere}.")
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except BlockingIOError:
            os.close(fd)
            raise RunDirectoryError(
                f"{self.path} is in use: another midblock run ({self._holder()}) holds its lock {self.lock_path}. "
                f"Wait for it to finish, or choose {self.elsewhere}."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            self.previous = run_status(self.path)
            files = self.previous_files()
            if files and not self.overwrite:
                refusal = self._refusal(files) if self.check_previous is None else self.check_previous(self, files)
                if refusal:
                    raise RunDirectoryError(refusal)
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Release the lock (the lock file stays: removing it would race with a new run's lock)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)  # closing the descriptor drops the flock

    # ------------------------------------------------------------ the run
    @property
    def started(self) -> bool:
        return self._status is not None

    def start(self, **info: Any) -> "RunDirectory":
        """Remove the previous run's files (``overwrite``) and mark the run ``running``."""
        if self._fd is None:
            raise RuntimeError("RunDirectory.start() outside its 'with' block")
        if self.started:
            return self
        removed = []
        for p in self.previous_files() if self.overwrite else []:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.name)
        if removed and self.log:
            self.log(
                f"midblock: {self.overwrite_flag}: removed the previous run's files in {self.path}: {', '.join(removed)}"
            )
        self._status = {
            "status": RUNNING,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _now(),
            "command": shlex.join(self.command),
            "cwd": os.getcwd(),
            **info,
        }
        if removed:
            self._status["replaced"] = {"files": removed, "status": (self.previous or {}).get("status")}
        write_json(self.status_path, self._status)
        return self

    def finish(self, **info: Any) -> None:
        """Record ``info`` (e.g. the report's path) for the ``complete`` status written on leaving the block."""
        self.info.update(info)

    def __enter__(self) -> "RunDirectory":
        return self.acquire()

    def end(self, error: BaseException | str | None = None) -> None:
        """Write the final status of a started run (``complete``, or ``incomplete`` with ``error``: an
        exception or a reason) and release the lock."""
        try:
            if self.started:
                if error is None:
                    status = {**self._status, **self.info, "status": COMPLETE, "finished": _now()}
                else:
                    if isinstance(error, BaseException):
                        error = type(error).__name__ + (f": {error}" if str(error) else "")
                    status = {**self._status, **self.info, "status": INCOMPLETE, "finished": _now(), "error": error}
                self._status = status
                write_json(self.status_path, status)
        finally:
            self.release()

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self.end(None if exc_type is None else (exc if exc is not None else exc_type.__name__))
        except OSError as write_error:
            if exc_type is None:
                raise
            # The run's own error (often the same full disk) is the one to report; the status keeps
            # 'running' with this pid, which run_status reads as incomplete once the process is gone.
            if self.log:
                self.log(f"midblock: could not record the run's end in {self.status_path}: {write_error}")
        return False
