"""Writing artifacts whole or not at all, and checking the disk has room before the expensive step.

Every artifact (an exported adapter, a merged model, a run's adapter, a report, a JSON file) is
written under a temporary name in its own directory and renamed into place once complete, so a
reader, a resume or a server never finds half of one: a crash, a full disk or a ``SIGKILL`` leaves
at most a hidden ``.<name>.<random>.tmp`` entry (which :class:`midblock_plugin.io.RunDirectory`
removes with ``--overwrite``), never a ``config.json`` without its weights.

* :func:`atomic_directory` / :func:`atomic_file`: stage, then rename into place. On any write
  error the staged files are removed and one :class:`WriteError` line names the path, the error
  and, for a full disk, how much was needed and how much is free.
* :func:`check_free_space`: refuse (:class:`NotEnoughSpace`) before the expensive step when the
  filesystem cannot hold what will be written; the sizes come from :func:`model_parameters`
  (safetensors headers or the config's shape-only model) times the dtype's bytes
  (:func:`model_bytes`), :func:`adapter_bytes` and :func:`checkpoint_bytes`.

>>> with atomic_directory("out/merged", need=model_bytes("base", "bfloat16")) as tmp:   # doctest: +SKIP
...     model.save_pretrained(tmp)
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


#: Bytes per element, by torch dtype name and by safetensors dtype code.
DTYPE_BYTES = {
    "float64": 8,
    "float32": 4,
    "bfloat16": 2,
    "float16": 2,
    "int8": 1,
    "uint8": 1,
    "F64": 8,
    "F32": 4,
    "BF16": 2,
    "F16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
#: PEFT keeps LoRA weights in float32 (``autocast_adapter_dtype``), whatever the base's dtype.
ADAPTER_DTYPE_BYTES = 4
#: Headroom on every estimate: configs, model cards, small reports, the filesystem's own blocks.
MARGIN_BYTES = 2**20

#: errno values that mean the write itself failed (not a missing input).
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
#: How libraries that do not raise ``OSError`` say a write failed (safetensors' Rust writer:
#: "I/O error: No space left on device (os error 28)"; torch.save: "PytorchStreamWriter failed
#: writing file" / "unexpected pos" from its zip writer).
_WRITE_TEXTS = (
    ("No space left on device", errno.ENOSPC),
    ("os error 28", errno.ENOSPC),
    ("Disk quota exceeded", errno.EDQUOT),
    ("os error 122", errno.EDQUOT),
    ("File too large", errno.EFBIG),
    ("Read-only file system", errno.EROFS),
    ("os error 30", errno.EROFS),
    ("failed writing file", None),
    ("inline_container.cc", None),
)
_FULL = (errno.ENOSPC, errno.EDQUOT)


class WriteError(OSError):
    """An artifact could not be written (its partial files are removed); the message is one line
    naming the path, the error and, for a full disk, what was needed. ``errno`` is set."""

    def __init__(self, message: str, code: int | None = None, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.errno = code
        self.path = None if path is None else os.fspath(path)


class NotEnoughSpace(WriteError):
    """:func:`check_free_space` found less free space than the artifact needs (nothing was written)."""

    def __init__(self, message: str, path: str | os.PathLike, need: int, free: int):
        super().__init__(message, errno.ENOSPC, path)
        self.need, self.free = int(need), int(free)


# --------------------------------------------------------------------------- sizes


def human(n: float | None) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    if n is None:
        return "an unknown amount"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes (for this user) on the filesystem that holds ``path`` or its nearest existing parent."""
    return int(shutil.disk_usage(_existing(Path(path))).free)


def check_free_space(path: str | os.PathLike, need_bytes: int, what: str) -> None:
    """Raise :class:`NotEnoughSpace` (an ``OSError``, ``errno.ENOSPC``) if the filesystem of ``path``
    has fewer than ``need_bytes`` free; ``what`` names the artifact in the message ("the merged
    model", "checkpoint-200"). Call it before the expensive step (loading, training), never after."""
    need = int(need_bytes)
    free = free_bytes(path)
    if free < need:
        raise NotEnoughSpace(
            f"not enough disk space for {what}: it needs about {human(need)} in {os.fspath(path)}, and "
            f"{human(free)} is free on that filesystem; free some space or choose a directory on another disk.",
            path,
            need,
            free,
        )


def _safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        import json

        with open(index, encoding="utf-8") as fh:
            shards = sorted(set((json.load(fh).get("weight_map") or {}).values()))
        return [model_dir / s for s in shards]
    return sorted(model_dir.glob("*.safetensors"))


def model_parameters(spec: Any) -> int:
    """The parameter count of a model: from the safetensors headers of a local directory (no tensor
    is read), else from its config's shape-only (meta-device) model. ``spec``: a directory, a hub id
    or a transformers config."""
    from midblock_plugin.checks import safetensors_shapes

    if isinstance(spec, (str, os.PathLike)) and Path(os.fspath(spec)).expanduser().is_dir():
        files = _safetensors_files(Path(os.fspath(spec)).expanduser())
        if files and all(f.is_file() for f in files):
            return sum(math.prod(shape) for f in files for shape in safetensors_shapes(f).values())
    config = spec
    if isinstance(spec, (str, os.PathLike)):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(os.fspath(spec))
    from midblock_plugin.architecture import meta_model

    return sum(p.numel() for p in meta_model(config).parameters())


def model_bytes(spec: Any, dtype: str | None = None) -> int:
    """Bytes of a model saved in ``dtype`` (default: the config's dtype, else float32):
    :func:`model_parameters` x the dtype's bytes, plus :data:`MARGIN_BYTES`."""
    if dtype is None:
        config = spec
        if isinstance(spec, (str, os.PathLike)):
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(os.fspath(spec))
        dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
        dtype = dtype.removeprefix("torch.")
    return model_parameters(spec) * DTYPE_BYTES.get(dtype, 4) + MARGIN_BYTES


def files_bytes(directory: str | os.PathLike, names: Any) -> int:
    """Total size of the files ``names`` that exist in ``directory`` (e.g. the tokenizer files copied beside an adapter)."""
    root = Path(os.fspath(directory)).expanduser()
    return sum((root / n).stat().st_size for n in names if (root / n).is_file())


#: Suffixes of weight files (what :func:`adapter_bytes` does not count as copied beside an adapter).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")


def adapter_bytes(trainable_params: int, model_dir: str | os.PathLike | None = None) -> int:
    """Bytes of a LoRA adapter saved by ``trainer.save_model``: its float32 weights, the tokenizer and
    config files saved beside it (at most every file of ``model_dir`` but its weights) and
    :data:`MARGIN_BYTES`."""
    extra = 0
    root = None if model_dir is None else Path(os.fspath(model_dir)).expanduser()
    if root is not None and root.is_dir():
        extra = sum(p.stat().st_size for p in root.iterdir() if p.is_file() and not p.name.endswith(WEIGHT_SUFFIXES))
    return int(trainable_params) * ADAPTER_DTYPE_BYTES + extra + MARGIN_BYTES


def checkpoint_bytes(model: Any, *, save_only_model: bool = False, optimizer_states: int = 2) -> int:
    """Bytes of one Trainer checkpoint of ``model``: the trainable parameters as saved (a PEFT model
    saves only its adapter; a full fine-tune the whole model in its dtype), plus the optimizer's
    ``optimizer_states`` float32 tensors per trainable parameter (AdamW: 2) unless ``save_only_model``.
    For :func:`check_free_space` before ``checkpoint-N`` is written."""

    def numel(p: Any) -> int:
        return int(getattr(p, "ds_numel", None) or p.numel())  # ZeRO-3 keeps a partition; ds_numel is the whole

    trainable = [p for p in model.parameters() if p.requires_grad]
    n = sum(numel(p) for p in trainable)
    saved = sum(
        numel(p) * p.element_size() for p in (trainable if hasattr(model, "peft_config") else model.parameters())
    )
    optimizer = 0 if save_only_model else n * 4 * optimizer_states
    return saved + optimizer + MARGIN_BYTES


# --------------------------------------------------------------------------- failures


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen and len(seen) < 8:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _inside(filename: Any, roots: tuple[Path, ...]) -> bool:
    try:
        p = Path(os.path.abspath(os.fsdecode(filename)))
    except (TypeError, ValueError):
        return False
    return any(p == r or r in p.parents for r in roots)


def write_failure(exc: BaseException, *roots: str | os.PathLike) -> tuple[int | None, str] | None:
    """``(errno, reason)`` if ``exc`` (or what caused it) is a failed write, ``None`` if it is something
    else (a bug, a missing input). An ``OSError`` about a file outside ``roots`` is not a write failure."""
    where = tuple(Path(os.path.abspath(r)) for r in roots)
    for e in _chain(exc):
        if isinstance(e, WriteError):
            return e.errno, str(e)
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            if e.filename is None or not where or _inside(e.filename, where):
                return e.errno, e.strerror or os.strerror(e.errno)
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno is not None:
            continue  # an OSError about an input (ENOENT, ...): not ours
        text = str(e)
        for pattern, code in _WRITE_TEXTS:
            if pattern in text:
                return code, os.strerror(code) if code is not None else text.strip().splitlines()[0][:200]
    return None


def write_error(
    path: str | os.PathLike, exc: BaseException, need: int | None = None, *roots: str | os.PathLike
) -> WriteError | None:
    """The one-line :class:`WriteError` for a failed write of ``path`` (``None`` if ``exc`` is not one)."""
    found = write_failure(exc, path, *roots)
    if found is None:
        return None
    code, reason = found
    if isinstance(exc, WriteError):
        return exc
    free = free_bytes(path)
    if code is None and need is not None and free < need:
        code, reason = errno.ENOSPC, os.strerror(errno.ENOSPC)  # an unhelpful library error on a full disk
    name = f" ({errno.errorcode[code]})" if code in errno.errorcode else ""
    text = f"cannot write {os.fspath(path)}: {reason}{name}"
    if code in _FULL:
        text += (
            f"; it needs about {human(need)} and {human(free)} is free there"
            if need
            else f"; {human(free)} is free there"
        )
    text += "; the partial files were removed"
    if code in _FULL:
        text += "; free some space or choose a directory on another disk."
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        text += "; choose a writable directory."
    else:
        text += "."
    return WriteError(text, code, path)


# --------------------------------------------------------------------------- atomic writes


def _mode(path: Path, directory: bool) -> None:
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if directory else 0o666) & ~mask)  # mkdtemp / mkstemp make private entries


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _fail(path: Path, exc: BaseException, need: int | None, staged: Path | None) -> None:
    """Remove what was staged; raise the one-line error if ``exc`` is a failed write (else let it propagate)."""
    if staged is not None:
        _remove(staged)
    if isinstance(exc, Exception):
        err = write_error(path, exc, need, *(() if staged is None else (staged,)))
        if err is not None and err is not exc:
            raise err from exc


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, need: int | None = None, replace: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory; when the block ends without error, it becomes ``path``.

    The staging directory is ``.<name>.<random>.tmp`` beside ``path`` (same filesystem, so the rename
    is atomic). ``path`` may be absent or an empty directory; one with files is replaced only with
    ``replace`` (the old one is moved aside and removed once the new one is in place), else a
    :class:`WriteError`. If the parent is not writable but ``path`` is an existing writable directory,
    the files are staged inside it and moved in one by one, those named ``midblock*`` (the reports)
    last. ``need``: the bytes the artifact will take (checked first, and named if the disk fills).
    On any error the staged files are removed; a failed write is re-raised as one :class:`WriteError`
    line."""
    path = Path(os.fspath(path)).expanduser()
    staged: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if need is not None:
            check_free_space(path.parent, need, str(path))
        inside = not os.access(path.parent, os.W_OK | os.X_OK) and path.is_dir() and os.access(path, os.W_OK | os.X_OK)
        staged = Path(tempfile.mkdtemp(dir=path if inside else path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        _mode(staged, directory=True)
        yield staged
        if inside:
            _commit_inside(staged, path, replace)
        else:
            _commit(staged, path, replace)
        staged = None
    except BaseException as exc:
        _fail(path, exc, need, staged)
        raise


def _commit(staged: Path, path: Path, replace: bool) -> None:
    if path.is_dir() and not path.is_symlink() and any(path.iterdir()):
        if not replace:
            raise _filled(path)
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old.tmp"))
        os.replace(path, old / path.name)
        try:
            os.replace(staged, path)
        except BaseException:
            os.replace(old / path.name, path)  # put the previous one back
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return
    if path.exists() and not path.is_dir():
        if not replace:
            raise WriteError(f"cannot write {path}: a file of that name exists.", errno.EEXIST, path)
        path.unlink()
    try:
        os.replace(staged, path)  # onto an absent path or an empty directory: one atomic rename
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        raise _filled(path) from None


def _filled(path: Path) -> WriteError:
    return WriteError(
        f"cannot write {path}: another process filled it while this one wrote (no file of either was mixed); "
        "give a new directory, or replace it explicitly.",
        errno.ENOTEMPTY,
        path,
    )


def _commit_inside(staged: Path, path: Path, replace: bool) -> None:
    for child in path.iterdir():
        if child != staged and not child.name.endswith(".tmp"):
            if not replace:
                raise _filled(path)
            _remove(child)
    for child in sorted(staged.iterdir(), key=lambda p: (p.name.startswith("midblock"), p.name)):
        os.replace(child, path / child.name)
    staged.rmdir()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, need: int | None = None) -> Iterator[Path]:
    """Yield a temporary file path beside ``path`` (``.<name>.<random>.tmp``, created empty); when the
    block ends without error it replaces ``path`` in one rename. Errors as :func:`atomic_directory`."""
    path = Path(os.fspath(path)).expanduser()
    staged: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if need is not None:
            check_free_space(path.parent, need, str(path))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        staged = Path(tmp)
        _mode(staged, directory=False)
        yield staged
        os.replace(staged, path)
        staged = None
    except BaseException as exc:
        _fail(path, exc, need, staged)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_file` (a one-line :class:`WriteError` on failure)."""
    with atomic_file(path, need=None) as tmp:
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            raise _sized(path, exc, len(data)) from exc
    return Path(os.fspath(path))


def _sized(path: str | os.PathLike, exc: OSError, need: int) -> OSError:
    err = write_error(path, exc, need)
    return err if err is not None else exc


def save_figure(fig: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """``fig.savefig(path)`` through :func:`atomic_file` (the format from ``path``'s suffix)."""
    path = Path(os.fspath(path))
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or None, **kwargs)
    return path
