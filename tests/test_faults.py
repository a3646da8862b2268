"""Faults, not bad values (issue 23): ``midblock run``, ``midblock export`` and a trainer's checkpoint
saves killed at chosen points, a disk that is or becomes full, a read-only directory, two processes at
once. Whatever happens, no directory claims ``complete`` unless it is, and nothing contradictory is
left (:func:`contradictions`): no ``adapter_config.json`` / ``config.json`` without its whole weights,
no half-written ``adapter/``, no ``running`` status with a dead pid read as live, no report of an
unfinished run, and, after an error that was handled, no staging file either.

Kills run in real subprocesses (``python -c DRIVER``): the driver installs one fault at a library
boundary (the safetensors writer that every PEFT / transformers save goes through,
``Trainer.training_step``, ``os.replace``) and runs ``midblock``. A disk that really fills is a small
tmpfs mounted in a user namespace (``unshare -rm``) where the kernel allows one; the rows with an
injected ``OSError(ENOSPC)`` run everywhere. Tiny models, 2 steps, ``--skip-eval``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from midblock_plugin import io, storage
from midblock_plugin.cli import main


pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "--preset",
    "cpu",
    "--max-steps",
    "2",
    "--num-examples",
    "8",
    "--heldout",
    "3",
    "--skip-eval",
    "--skip-analysis",
]
VARIANT = "variant-01110"

#: Runs ``midblock`` (or, with ``--trainer OUT``, an SFTTrainer saving a checkpoint every step) with one fault,
#: ``MIDBLOCK_FAULT=<kind>@<where>[#<n>]``: kind ``kill`` (SIGKILL itself), ``enospc`` (raise OSError(ENOSPC)) or
#: ``fill`` (fill the filesystem at $MIDBLOCK_FAULT_FILL but 64 KiB, then let the real write fail in the kernel);
#: where ``save`` (the n-th safetensors file written, half written first), ``train`` (the n-th training step) or
#: ``rename:<name>`` (the n-th os.replace onto a file of that name, once it is fully written).
DRIVER = r"""
import errno, os, signal, sys

kind, _, where = os.environ["MIDBLOCK_FAULT"].partition("@")
where, _, nth = where.partition("#")
nth, calls = int(nth or 1), [0]


def hit():
    calls[0] += 1
    return calls[0] == nth


def strike():
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    elif kind == "fill":  # another process fills the disk
        path = os.path.join(os.environ["MIDBLOCK_FAULT_FILL"], "filler")
        with open(path, "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        os.truncate(path, max(0, os.path.getsize(path) - 65536))  # room for a status file, not for weights


if where == "save":
    import peft.peft_model
    import safetensors.torch
    import transformers.modeling_utils

    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if hit():
            if kind != "fill":
                real(tensors, filename, metadata=metadata)
                os.truncate(filename, os.path.getsize(filename) // 2)  # half a file, as a killed writer leaves it
            strike()
        return real(tensors, filename, metadata=metadata)

    safetensors.torch.save_file = save_file
    transformers.modeling_utils.safe_save_file = save_file
    peft.peft_model.safe_save_file = save_file
elif where == "train":
    import transformers

    real_step = transformers.Trainer.training_step

    def training_step(self, *args, **kwargs):
        if hit():
            strike()
        return real_step(self, *args, **kwargs)

    transformers.Trainer.training_step = training_step
elif where.startswith("rename:"):
    name, real_replace = where.split(":", 1)[1], os.replace

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(os.fspath(dst)) == name and hit():
            strike()
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace

if sys.argv[1:2] == ["--trainer"]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from midblock_plugin import MidBlockConfig
    from midblock_plugin.integrations.trl import MidBlockCallback, build_plan
    from midblock_plugin.testing import gsm8k_rows, tiny_model, tiny_tokenizer

    model = tiny_model("llama", num_layers=6)
    plan = build_plan(model, MidBlockConfig())
    rows = [{"text": f"Question: {r['question']}\nAnswer: {r['answer']}"} for r in gsm8k_rows("train", 8)]
    args = SFTConfig(
        output_dir=sys.argv[2], max_steps=3, save_strategy="steps", save_steps=1, per_device_train_batch_size=2,
        use_cpu=True, bf16=False, report_to=[], logging_steps=1, max_length=48, seed=0,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tiny_tokenizer(),
        peft_config=plan.lora_config(), callbacks=[callback := MidBlockCallback(plan=plan)],
    )
    callback.bind(trainer)
    trainer.train(resume_from_checkpoint=True if "--resume" in sys.argv else None)
    sys.exit(0)

from midblock_plugin.cli import main

sys.exit(main(sys.argv[1:]))
"""


def _driver_cmd(*args) -> list[str]:
    return [sys.executable, "-c", DRIVER, *map(str, args)]


def _driver(fault: str, *args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        _driver_cmd(*args),
        env={**os.environ, "MIDBLOCK_FAULT": fault, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _midblock(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "midblock_plugin.cli", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- what must hold after any fault


def _whole(weights: Path) -> bool:
    from safetensors.torch import load_file

    if weights.suffix != ".safetensors":
        return weights.stat().st_size > 0
    try:
        load_file(str(weights))
    except Exception:  # noqa: BLE001  (a truncated file fails in several ways)
        return False
    return True


def contradictions(root: Path) -> list[str]:
    """Everything under ``root`` that claims more than it holds (staging entries ``.*.tmp`` are never read
    as artifacts and are not looked into)."""
    found = []
    dirs = [root, *(p for p in root.rglob("*") if p.is_dir())]
    for d in dirs:
        rel = d.relative_to(root)
        if any(part.endswith(".tmp") for part in rel.parts):
            continue
        names = {p.name for p in d.iterdir()}
        weights = [d / n for n in names if n.endswith((".safetensors", ".bin")) and n != "training_args.bin"]
        if "adapter_config.json" in names:
            files = [w for w in weights if w.name.startswith("adapter_model")]
            if not files or not all(_whole(w) for w in files):
                found.append(f"{rel}: adapter_config.json without whole adapter weights")
        if "config.json" in names and not ("adapter_config.json" in names or all(_whole(w) for w in weights)):
            found.append(f"{rel}: config.json without whole weights")
        if "config.json" in names and not weights:
            found.append(f"{rel}: config.json without weights")
        if d.name == "adapter" and "adapter_config.json" not in names:
            found.append(f"{rel}: an adapter directory without adapter_config.json")
        if d.name.startswith("checkpoint-") and "trainer_state.json" in names and "adapter_config.json" not in names:
            found.append(f"{rel}: a checkpoint with trainer_state.json (complete) but no adapter")
        if io.RUN_STATUS_JSON in names:
            raw = json.loads((d / io.RUN_STATUS_JSON).read_text())
            st = io.run_status(d)
            if raw["status"] == io.RUNNING and not io.pid_alive(raw.get("pid")) and st["status"] != io.INCOMPLETE:
                found.append(f"{rel}: 'running' with a dead pid read as {st['status']}")
            if st["status"] == io.COMPLETE:
                for need in (io.REPORT_MD, io.RESULTS_JSON):
                    if need not in names and (d / VARIANT).is_dir():
                        found.append(f"{rel}: complete without {need}")
                for v in d.glob(f"{io.VARIANT_PREFIX}*"):
                    if not (v / "adapter" / "adapter_config.json").is_file():
                        found.append(f"{rel}: complete without {v.name}/adapter")
            elif io.REPORT_MD in names:
                found.append(f"{rel}: a report of a run that is {st['status']}")
    return found


def _staging(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def _one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"midblock {command}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from midblock_plugin.testing import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "tiny-base", "llama", num_layers=10, seed=0)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    from tests.test_export import _make_adapter

    return _make_adapter(tmp_path_factory.mktemp("adapter"))


# --------------------------------------------------------------------------- killed (SIGKILL: nothing can clean up)


KILLS = [
    ("training", "kill@train#2"),
    ("saving the adapter", "kill@save#1"),
    ("renaming the report into place", "kill@rename:report.md#1"),
]


@pytest.mark.parametrize("point, fault", KILLS, ids=[k[0] for k in KILLS])
def test_a_run_killed_while(point, fault, tiny, tmp_path):
    out = tmp_path / "run"
    r = _driver(fault, "run", "--model", tiny, *FAST, "--output-dir", out)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    raw = json.loads((out / io.RUN_STATUS_JSON).read_text())
    assert raw["status"] == io.RUNNING  # killed outright: nothing could record it
    st = io.run_status(out)
    assert st["status"] == io.INCOMPLETE and st["stale"], st  # ... and it is never read as live
    assert contradictions(out) == []
    assert not (out / io.REPORT_MD).exists()
    if point == "saving the adapter":  # the half-written adapter lies under its staging name only
        assert not (out / VARIANT / "adapter").exists()
        assert [p.name.startswith(".adapter.") for p in _staging(out)] == [True]
    # a rerun is refused, and --overwrite removes every file the killed run left, staging included
    # (tests/test_run_directory.py runs both)
    left = {p.name for p in out.iterdir()} - {io.RUN_LOCK}
    assert {p.name for p in io.RunDirectory(out).previous_files()} == left


def test_a_checkpoint_save_killed_midway_leaves_the_previous_checkpoint_whole(tmp_path):
    """SIGKILL while the trainer writes checkpoint-2's adapter: checkpoint-1 is whole and complete (its
    trainer_state.json, adapter and plan), checkpoint-2 claims nothing (no trainer_state.json, no config)."""
    out = tmp_path / "trl"
    r = _driver("kill@save#2", "--trainer", out)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    first, second = out / "checkpoint-1", out / "checkpoint-2"
    assert (first / "trainer_state.json").is_file() and (first / io.PLAN_JSON).is_file()
    assert _whole(first / "adapter_model.safetensors") and (first / "adapter_config.json").is_file()
    assert not (second / "trainer_state.json").exists() and not (second / "adapter_config.json").exists()
    assert contradictions(out) == []
    # resuming with resume_from_checkpoint=True (the Trainer picks checkpoint-2) is refused before it loads
    r = _driver("none@", "--trainer", out, "--resume")
    assert r.returncode == 1 and "IncompleteCheckpoint" in r.stderr, r.stderr[-3000:]
    assert f"cannot resume from {second}: it is incomplete (no trainer_state.json" in r.stderr
    assert f"remove it to resume from {first} (the last whole checkpoint)" in r.stderr
    assert not (second / "trainer_state.json").exists() and contradictions(out) == []


def test_an_export_killed_while_writing_leaves_nothing_under_its_name(adapter, tmp_path):
    base, src = adapter
    out = tmp_path / "merged"
    r = _driver("kill@save#1", "export", src, "--target", "merged", "--output", out)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert not out.exists()
    assert [p.name.startswith(".merged.") for p in tmp_path.iterdir()] == [True]  # its staging directory only
    assert contradictions(tmp_path) == []


# --------------------------------------------------------------------------- a full disk (injected ENOSPC)


def _half_then_enospc(tensors, filename, metadata=None):
    from safetensors.torch import save_file

    save_file(tensors, filename, metadata=metadata)
    os.truncate(filename, os.path.getsize(filename) // 2)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_disk_full_while_saving_the_adapter(tiny, tmp_path, monkeypatch, capsys):
    import peft.peft_model

    monkeypatch.setattr(peft.peft_model, "safe_save_file", _half_then_enospc)
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny), *FAST, "--output-dir", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err, "run")
    assert f"cannot write {out / VARIANT / 'adapter'}: No space left on device (ENOSPC)" in line
    assert "it needs about" in line and "is free there; the partial files were removed" in line
    st = io.run_status(out)
    assert st["status"] == io.INCOMPLETE and "No space left on device" in st["error"]
    assert not _staging(out) and not (out / VARIANT / "adapter").exists() and contradictions(out) == []


def test_a_disk_full_while_writing_the_results(tiny, tmp_path, monkeypatch, capsys):
    """The run's JSON files go through storage's atomic write: the partial temporary file is removed."""
    real_open = open

    def full_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if "w" in mode and os.path.basename(os.fspath(file)).startswith(f".{io.RESULTS_JSON}."):
            fh.write(b"{")  # a partial write, then the disk is full
            fh.flush()
            fh.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fh

    monkeypatch.setattr(storage, "open", full_open, raising=False)
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny), *FAST, "--output-dir", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err, "run")
    assert f"cannot write {out / io.RESULTS_JSON}: No space left on device (ENOSPC); it needs about" in line
    assert io.run_status(out)["status"] == io.INCOMPLETE
    assert not (out / io.RESULTS_JSON).exists() and not (out / io.REPORT_MD).exists()
    assert not _staging(out) and contradictions(out) == []


def test_a_disk_full_while_saving_a_merged_model(adapter, tmp_path, monkeypatch, capsys):
    import transformers.modeling_utils

    base, src = adapter
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", _half_then_enospc)
    out = tmp_path / "out" / "merged"
    assert main(["export", str(src), "--target", "merged", "--output", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err, "export")
    assert f"cannot write {out}: No space left on device (ENOSPC); it needs about" in line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())  # no staging, no partial files


# --------------------------------------------------------------------------- a real small filesystem


def _userns() -> bool:
    """Whether this kernel lets an unprivileged process mount a tmpfs in its own user namespace."""
    if shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(
            ["unshare", "-rm", "sh", "-c", 'd=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs "$d"'],
            capture_output=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


USERNS = _userns()
small_fs = pytest.mark.skipif(
    not USERNS, reason="no user namespaces here (unshare -rm): the injected-ENOSPC rows above cover a full disk"
)

#: In a user namespace: mount a tmpfs (options $1) on $2, run the command, copy what it left to $3.
IN_TMPFS = (
    'mount -t tmpfs -o "$1" tmpfs "$2" || exit 97; m="$2"; keep="$3"; shift 3; "$@"; rc=$?; '
    'rm -f "$m/filler"; cp -a "$m" "$keep"; exit $rc'
)


def _in_tmpfs(
    tmp_path: Path, options: str, cmd: list[str], env: dict | None = None
) -> tuple[subprocess.CompletedProcess, Path, Path]:
    mount, keep = tmp_path / "mnt", tmp_path / "left"
    mount.mkdir()
    r = subprocess.run(
        ["unshare", "-rm", "sh", "-c", IN_TMPFS, "sh", options, str(mount), str(keep), *cmd],
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 97, r.stderr
    return r, mount, keep


@small_fs
def test_a_run_onto_a_too_small_filesystem_is_refused_before_any_model_loads(tiny, tmp_path):
    cmd = [sys.executable, "-m", "midblock_plugin.cli", "run", "--model", str(tiny), *FAST]
    r, mount, keep = _in_tmpfs(tmp_path, "size=1m", [*cmd, "--output-dir", str(tmp_path / "mnt" / "run")])
    assert r.returncode == 2, r.stderr[-3000:]
    line = _one_error_line(r.stderr, "run")
    assert "not enough disk space for the adapters and reports of midblock run: it needs about" in line
    assert "KiB is free on that filesystem" in line and "Loading weights" not in r.stderr
    assert [p.name for p in (keep / "run").iterdir()] == [io.RUN_LOCK]  # nothing started, nothing to clean


@small_fs
def test_a_disk_that_fills_while_the_adapter_is_saved(tiny, tmp_path):
    """Another process fills the filesystem during the run: the kernel's ENOSPC from safetensors' writer."""
    out = tmp_path / "mnt" / "run"
    r, mount, keep = _in_tmpfs(
        tmp_path,
        "size=48m",
        [*_driver_cmd("run", "--model", tiny, *FAST, "--output-dir", out)],
        env={"MIDBLOCK_FAULT": "fill@save#1", "MIDBLOCK_FAULT_FILL": str(tmp_path / "mnt")},
    )
    assert r.returncode == 2, r.stderr[-3000:]
    line = _one_error_line(r.stderr, "run")
    assert f"cannot write {out / VARIANT / 'adapter'}: No space left on device (ENOSPC); it needs about" in line
    left = keep / "run"
    st = json.loads((left / io.RUN_STATUS_JSON).read_text())
    assert st["status"] == io.INCOMPLETE and "No space left on device" in st["error"]
    assert not _staging(left) and not (left / VARIANT / "adapter").exists() and contradictions(left) == []


@small_fs
def test_a_disk_that_fills_while_a_merged_model_is_saved(adapter, tmp_path):
    base, src = adapter
    out = tmp_path / "mnt" / "merged"
    r, mount, keep = _in_tmpfs(
        tmp_path,
        "size=48m",
        [*_driver_cmd("export", src, "--target", "merged", "--output", out)],
        env={"MIDBLOCK_FAULT": "fill@save#1", "MIDBLOCK_FAULT_FILL": str(tmp_path / "mnt")},
    )
    assert r.returncode == 2, r.stderr[-3000:]
    line = _one_error_line(r.stderr, "export")
    assert f"cannot write {out}: No space left on device (ENOSPC); it needs about" in line
    assert not list(keep.iterdir())  # no merged/, no staging: the filesystem holds only what the filler left


# --------------------------------------------------------------------------- read-only output directories


def _read_only(tmp_path: Path) -> tuple[list[str], Path]:
    """(a command prefix, a read-only directory): a read-only tmpfs in a user namespace, else chmod 0555
    (which root ignores)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if USERNS:
        script = 'mount -t tmpfs -o ro,size=64k tmpfs "$1" || exit 97; shift; exec "$@"'
        return ["unshare", "-rm", "sh", "-c", script, "sh", str(ro)], ro
    if os.geteuid() == 0:
        pytest.skip("root ignores permission bits and no user namespace is allowed for a read-only mount")
    ro.chmod(0o555)
    return [], ro


READ_ONLY = [
    ("run", lambda tiny, src, out: ["run", "--model", tiny, *FAST, "--output-dir", out]),
    ("export", lambda tiny, src, out: ["export", src, "--target", "merged", "--output", out]),
]


@pytest.mark.parametrize("command, args", READ_ONLY, ids=[c for c, _ in READ_ONLY])
def test_a_read_only_output_directory_is_refused_before_any_work(command, args, tiny, adapter, tmp_path):
    prefix, ro = _read_only(tmp_path)
    out = ro / "out"
    cmd = [*prefix, sys.executable, "-m", "midblock_plugin.cli", *map(str, args(tiny, adapter[1], out))]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    line = _one_error_line(r.stderr, command)
    assert str(ro) in line and ("not writable" in line or "Read-only file system" in line), line
    assert "Loading weights" not in r.stderr


# --------------------------------------------------------------------------- two processes at once


def test_a_run_into_a_directory_another_process_holds_fails_at_once(tiny, tmp_path):
    out = tmp_path / "run"
    with io.RunDirectory(out):  # this test process holds the directory
        t0 = time.monotonic()
        r = _midblock("run", "--model", tiny, *FAST, "--output-dir", out)
        took = time.monotonic() - t0
    assert r.returncode == 2 and took < 60
    line = _one_error_line(r.stderr, "run")
    assert "is in use" in line and f"pid {os.getpid()}" in line
    assert not (out / io.RUN_STATUS_JSON).exists() and contradictions(out) == []


def test_two_exports_into_one_directory_at_once_never_mix(adapter, tmp_path):
    """Both find --output empty and stage their files; the first to finish takes the name, the other is
    refused in one line, and the directory holds exactly the files its report lists."""
    base, src = adapter
    out = tmp_path / "tgi"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "midblock_plugin.cli", "export", str(src), "--target", "tgi", "--output", str(out)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, _, err in results if rc == 2)
    line = _one_error_line(loser, "export")
    assert "another process filled it" in line or "is not empty" in line, line
    report = json.loads((out / "midblock-export.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(report["files"]) and report["passed"]
    assert not _staging(tmp_path) and contradictions(tmp_path) == []


# --------------------------------------------------------------------------- the helpers themselves


def test_atomic_directory_renames_whole_or_leaves_nothing(tmp_path):
    out = tmp_path / "a"
    out.mkdir()  # an empty directory is replaced in one rename
    with storage.atomic_directory(out) as staging:
        (staging / "x").write_text("1")
        assert not (out / "x").exists()  # nothing under the name until the block ends
    assert (out / "x").read_text() == "1" and not _staging(tmp_path)
    with pytest.raises(RuntimeError, match="a bug"), storage.atomic_directory(tmp_path / "b") as staging:
        (staging / "x").write_text("1")
        raise RuntimeError("a bug")  # not a write failure: propagated as it is, the staged files removed
    assert not (tmp_path / "b").exists() and not _staging(tmp_path)
    with pytest.raises(storage.WriteError, match="another process filled it"), storage.atomic_directory(out):
        pass  # out holds files and replace was not asked
    with storage.atomic_directory(out, replace=True) as staging:
        (staging / "y").write_text("2")
    assert [p.name for p in out.iterdir()] == ["y"] and not _staging(tmp_path)


def test_write_failures_are_told_from_other_errors(tmp_path):
    from safetensors import SafetensorError

    full = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert storage.write_failure(full, tmp_path) == (errno.ENOSPC, "No space left on device")
    assert storage.write_failure(OSError(errno.EROFS, "Read-only file system"), tmp_path)[0] == errno.EROFS
    missing_input = FileNotFoundError(errno.ENOENT, "No such file or directory", "/elsewhere/config.json")
    assert storage.write_failure(missing_input, tmp_path) is None
    denied_elsewhere = PermissionError(errno.EACCES, "Permission denied", "/elsewhere/model.safetensors")
    assert storage.write_failure(denied_elsewhere, tmp_path) is None  # reading an input, not our write
    err = storage.write_error(tmp_path / "m", full, need=10 * 2**30)
    assert str(err).startswith(
        f"cannot write {tmp_path / 'm'}: No space left on device (ENOSPC); it needs about 10.0 GiB"
    )
    assert "\n" not in str(err) and err.errno == errno.ENOSPC


def test_checkpoint_bytes_counts_what_a_checkpoint_holds(tmp_path):
    """A LoRA checkpoint: the adapter (float32) and AdamW's two float32 states per trainable parameter, which a
    real save of the adapter confirms."""
    from peft import get_peft_model

    from midblock_plugin import MidBlockConfig
    from midblock_plugin.plan import build_plan
    from midblock_plugin.testing import tiny_model

    model = tiny_model("llama", num_layers=6)
    peft_model = get_peft_model(model, build_plan(model, MidBlockConfig()).lora_config())
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert storage.checkpoint_bytes(peft_model) == trainable * 4 * 3 + storage.MARGIN_BYTES
    assert storage.checkpoint_bytes(peft_model, save_only_model=True) == trainable * 4 + storage.MARGIN_BYTES
    peft_model.save_pretrained(tmp_path)
    saved = (tmp_path / "adapter_model.safetensors").stat().st_size
    assert trainable * 4 <= saved < trainable * 4 + 64 * 1024  # the tensors plus a header


def test_atomic_directory_stages_inside_an_existing_output_whose_parent_is_read_only(tmp_path, monkeypatch):
    """An --output made writable in a read-only place: the files are staged inside it and moved in, the
    reports (``midblock*``) last, so a reader that sees the report sees every file it lists."""
    out = tmp_path / "given"
    out.mkdir()
    real_access = os.access
    monkeypatch.setattr(storage.os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    moved = []
    real_replace = os.replace
    monkeypatch.setattr(storage.os, "replace", lambda a, b: (moved.append(Path(b).name), real_replace(a, b)))
    with storage.atomic_directory(out) as staging:
        assert staging.parent == out and staging.name.startswith(".given.")
        for name in ("midblock-export.json", "adapter_model.safetensors", "adapter_config.json"):
            (staging / name).write_text(name)
    assert moved == ["adapter_config.json", "adapter_model.safetensors", "midblock-export.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted(moved)
