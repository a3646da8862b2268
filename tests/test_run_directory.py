"""``midblock run`` / ``compare`` lose nothing and say everything (issue 11): the run directory
is locked and never mixed with a previous run, degenerate options fail before any work, and a
missing optional package degrades the report instead of crashing after training.

Tiny models only (``save_tiny``), ``--skip-eval``, 1-2 steps."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from midblock_plugin import io
from midblock_plugin.cli import main


pytestmark = pytest.mark.slow

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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random 10-layer Llama directory, given as --model."""
    from midblock_plugin.testing import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "tiny-base", "llama", num_layers=10, seed=0)


def _cmd(*args):
    return [sys.executable, "-m", "midblock_plugin.cli", *map(str, args)]


def _midblock(*args, timeout=600):
    return subprocess.run(_cmd(*args), capture_output=True, text=True, timeout=timeout)


def _status(out: Path) -> dict:
    return json.loads((out / io.RUN_STATUS_JSON).read_text())


@pytest.fixture(scope="module")
def race(tiny, tmp_path_factory):
    """Two ``midblock run`` processes started together into one directory."""
    out = tmp_path_factory.mktemp("race") / "run"
    procs = [
        subprocess.Popen(
            _cmd("run", "--model", tiny, *FAST, "--output-dir", out),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        first = None
        deadline = time.monotonic() + 600
        while first is None and time.monotonic() < deadline:
            first = next((p for p in procs if p.poll() is not None), None)
            time.sleep(0.05)
        assert first is not None, "neither run ended"
        other = procs[1 - procs.index(first)]
        other_running_when_first_ended = other.poll() is None
        results = {}
        for p in procs:
            stdout, stderr = p.communicate(timeout=600)
            results[p.pid] = (p.returncode, stdout, stderr)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return {
        "out": out,
        "first": first.pid,
        "other": other.pid,
        "overlap": other_running_when_first_ended,
        "results": results,
    }


def test_two_concurrent_runs_one_fails_at_once_naming_the_lock(race):
    out, results = race["out"], race["results"]
    loser, winner = race["first"], race["other"]
    assert race["overlap"], "the refused run must end while the other one still trains"
    rc, _, err = results[loser]
    assert rc != 0
    assert "lock" in err and str(out) in err and f"pid {winner}" in err, err
    assert "Traceback" not in err
    rc, stdout, err = results[winner]
    assert rc == 0, err[-3000:]
    assert "report:" in stdout
    st = _status(out)
    assert st["status"] == "complete" and st["pid"] == winner
    assert (out / io.REPORT_MD).exists() and (out / "variant-01110" / "adapter").is_dir()


def test_second_run_into_a_finished_directory_is_refused(race, tiny, monkeypatch, capsys):
    out = race["out"]
    before = {p: p.read_bytes() for p in (out / io.REPORT_MD, out / io.RESULTS_JSON, out / io.RUN_STATUS_JSON)}
    t0 = time.monotonic()
    r = _midblock("run", "--model", tiny, *FAST, "--output-dir", out, timeout=120)
    assert r.returncode == 2 and time.monotonic() - t0 < 60
    assert "finished midblock run" in r.stderr and "--overwrite" in r.stderr and "--output-dir" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    # a degenerate value with --overwrite is refused before the previous run is touched
    monkeypatch.setattr("midblock_plugin.experiments.train.load_base", _no_model)
    assert main(["run", "--model", str(tiny), *FAST, "--heldout", "0", "--overwrite", "--output-dir", str(out)]) == 2
    assert "--heldout 0" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before  # byte-identical


def test_overwrite_removes_the_previous_run_first(race, tiny, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(race["out"], out)
    old_report = (out / io.REPORT_MD).read_text()
    stale = out / "variant-11111"  # a variant of the previous run that this run does not train
    (stale / "midblock").mkdir(parents=True)
    (stale / "midblock" / "plan.json").write_text("{}")
    (out / "notes.txt").write_text("mine")  # not a run's file: kept
    r = _midblock("run", "--model", tiny, *FAST, "--max-steps", "1", "--overwrite", "--output-dir", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "removed the previous run's files" in r.stderr
    assert not stale.exists()
    assert (out / "notes.txt").read_text() == "mine"
    report = (out / io.REPORT_MD).read_text()
    assert report != old_report and "max steps 1" in report
    results = json.loads((out / io.RESULTS_JSON).read_text())
    assert results["variants"][0]["steps"] == 1
    st = _status(out)
    assert st["status"] == "complete" and st["replaced"]["status"] == "complete"


def _wait_for_a_training_step(p, out, log) -> None:
    """Until the run is marked running and has printed a training step line (or 300 s, or it exits)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and p.poll() is None:
        running = (out / io.RUN_STATUS_JSON).exists() and _status(out)["status"] == "running"
        if running and "  loss " in log.read_text(errors="replace"):  # a training step line was printed
            return
        time.sleep(0.2)


def test_interrupted_run_is_marked_incomplete_and_a_rerun_refused(tiny, tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "log.txt"
    args = ["run", "--model", tiny, *FAST, "--max-steps", "100000", "--output-dir", out]
    with open(log, "w") as fh:
        # SIGINT must reach Python's default handler even if the test runner ignores it
        p = subprocess.Popen(
            _cmd(*args),
            stdout=fh,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            _wait_for_a_training_step(p, out, log)
            assert p.poll() is None, log.read_text()[-3000:]
            p.send_signal(signal.SIGINT)
            p.wait(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
    assert p.returncode != 0
    st = _status(out)
    assert st["status"] == "incomplete" and "KeyboardInterrupt" in st["error"], st
    assert not (out / io.REPORT_MD).exists()  # no report claims a finished run
    assert io.run_status(out)["status"] == "incomplete"
    r = _midblock("run", "--model", tiny, *FAST, "--output-dir", out, timeout=120)
    assert r.returncode == 2 and "incomplete midblock run" in r.stderr and "KeyboardInterrupt" in r.stderr, r.stderr
    assert "--overwrite" in r.stderr and "Traceback" not in r.stderr


def test_a_killed_run_counts_as_incomplete(tiny, tmp_path):
    """A run killed outright leaves ``running`` with a dead pid: read as incomplete, refused."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "run"
    (out / "variant-01110" / "midblock").mkdir(parents=True)
    (out / "variant-01110" / "midblock" / "plan.json").write_text("{}")
    io.write_json(
        out / io.RUN_STATUS_JSON,
        {
            "status": "running",
            "pid": int(dead.stdout),
            "host": socket.gethostname(),
            "started": "2020-01-01T00:00:00+00:00",
        },
    )
    st = io.run_status(out)
    assert st["status"] == "incomplete" and st["stale"]
    r = _midblock("run", "--model", tiny, *FAST, "--output-dir", out, timeout=120)
    assert r.returncode == 2 and "incomplete midblock run" in r.stderr and f"pid {int(dead.stdout)}" in r.stderr, (
        r.stderr
    )


def test_run_directory_guard_in_process(tmp_path):
    out = tmp_path / "d"
    with io.RunDirectory(out) as run:
        with pytest.raises(io.RunDirectoryError, match=f"pid {os.getpid()}"):
            io.RunDirectory(out).acquire()  # a second guard on the same directory, same process: refused
        run.start(extra=1)
        assert _status(out)["status"] == "running"
    assert _status(out)["status"] == "complete"
    with pytest.raises(io.RunDirectoryError, match="finished"):
        io.RunDirectory(out).acquire()
    with pytest.raises(RuntimeError):
        with io.RunDirectory(out, overwrite=True) as run:
            run.start()
            raise RuntimeError("boom")
    st = _status(out)
    assert st["status"] == "incomplete" and st["error"] == "RuntimeError: boom"
    with io.RunDirectory(out, overwrite=True):  # checked but never started: nothing written or removed
        pass
    assert _status(out)["status"] == "incomplete"


def _no_model(*a, **k):
    raise AssertionError("a model was loaded")


BAD = [
    ("run", ["--heldout", "0"], "--heldout 0"),
    ("run", ["--heldout", "-5"], "--heldout -5"),
    ("run", ["--heldout", "100000"], "--heldout 100000"),
    ("run", ["--max-steps", "0"], "--max-steps 0"),
    ("run", ["--max-steps", "-2"], "--max-steps -2"),
    ("run", ["--num-examples", "0"], "--num-examples 0"),
    ("run", ["--num-examples", "100000"], "--num-examples 100000"),
    ("run", ["--batch-size", "0"], "--batch-size 0"),
    ("run", ["--batch-size", "-3"], "--batch-size -3"),
    ("run", ["--grad-accum", "0"], "--grad-accum 0"),
    ("run", ["--lr", "0"], "--lr 0"),
    ("run", ["--lr=-1e-4"], "--lr -0.0001"),
    ("run", ["--lr", "nan"], "--lr nan"),
    ("run", ["--lr", "inf"], "--lr inf"),
    ("run", ["--max-length", "4"], "--max-length 4"),
    ("run", ["--eval-limit", "0"], "--eval-limit 0"),
    ("run", ["--analysis-prompts", "1"], "--analysis-prompts 1"),
    ("run", ["--max-gen-toks", "0"], "--max-gen-toks 0"),
    ("run", ["--rank", "0"], "--rank 0"),
    ("run", ["--seed", "-1"], "--seed -1"),
    ("run", ["--segments", ""], "--segments ''"),
    ("run", ["--segments", " "], "--segments ' '"),
    ("compare", ["--variants", ""], "--variants ''"),
    ("compare", ["--variants", " , "], "--variants ' , '"),
    ("compare", ["--variants", "11111,,01110"], "empty entry"),
    ("compare", ["--variants", "01110,01110"], "more than once"),
    ("sweep", ["--lrs", "0,1e-3"], "--lrs '0,1e-3'"),
    ("sweep", ["--lrs", "1e-3,1e-3"], "more than once"),
    ("sweep", ["--lrs", ""], "--lrs ''"),
    ("compare", ["--variants", "recommended,11111"], "--window-from"),
    ("sweep", ["--validation", "0"], "--validation 0"),
    ("sweep", ["--num-examples", "7440", "--lrs", "1e-4,1e-3"], "--validation 64"),
    ("run", ["--model", str(Path("/nonexistent") / "model")], "--model"),
]


@pytest.mark.parametrize("command, flags, says", BAD, ids=[" ".join(b[1]) or "empty" for b in BAD])
def test_degenerate_values_fail_before_any_work(command, flags, says, tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("midblock_plugin.experiments.train.load_base", _no_model)
    out = tmp_path / "out"
    rc = main([command, "--model", str(tiny), *FAST, "--output-dir", str(out), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and says in err and f"midblock {command}: error:" in err, err
    assert not list(out.glob("variant-*")) and not (out / io.RUN_STATUS_JSON).exists()


def test_degenerate_value_from_the_shell_has_no_traceback(tiny, tmp_path):
    r = _midblock("compare", "--model", tiny, *FAST, "--variants", "", "--output-dir", tmp_path / "out", timeout=120)
    assert r.returncode == 2 and "--variants ''" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


NO_MATPLOTLIB = """
import sys

class NoMatplotlib:  # as if matplotlib were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoMatplotlib())
from midblock_plugin.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_matplotlib_the_run_completes_and_says_figures_were_skipped(tiny, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--model", tiny, *FAST[:-1], "--analysis-prompts", "4", "--output-dir", out]  # with the analysis
    r = subprocess.run(
        [sys.executable, "-c", NO_MATPLOTLIB, *map(str, args)], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = (out / io.REPORT_MD).read_text()
    assert "Figures were skipped: matplotlib is not installed" in report
    assert "pip install -e '.[analysis]'" in report  # rules.install_hint, the one home of install lines
    assert "![" not in report and not list(out.rglob("*.png"))
    assert (out / "analysis" / "analysis.json").exists() and "Recommended window: layers" in report
    assert _status(out)["status"] == "complete"
    assert json.loads((out / io.RESULTS_JSON).read_text())["figures_skipped"]


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_raise_terminated_with_the_exit_code(sig, code):
    """The handlers the CLI installs turn a real signal into Terminated (a KeyboardInterrupt, so every
    run directory records it as incomplete), with 128 + the signal number."""
    from midblock_plugin.cli import Terminated, install_signal_handlers

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        install_signal_handlers()
        with pytest.raises(Terminated) as info:
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler runs at the next bytecode; never reached
        assert isinstance(info.value, KeyboardInterrupt) and 128 + info.value.signum == code
        assert info.value.name == signal.Signals(sig).name
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def test_sigterm_during_a_run_is_recorded_with_the_signal(tiny, tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "log.txt"
    args = ["run", "--model", tiny, *FAST, "--max-steps", "100000", "--output-dir", out]
    with open(log, "w") as fh:
        p = subprocess.Popen(_cmd(*args), stdout=fh, stderr=subprocess.STDOUT)
        try:
            _wait_for_a_training_step(p, out, log)
            assert p.poll() is None, log.read_text()[-3000:]
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
    assert p.returncode == 143, log.read_text()[-2000:]
    st = _status(out)
    assert st["status"] == "incomplete" and "SIGTERM" in st["error"], st
    assert "midblock run: terminated by SIGTERM" in log.read_text() and "Traceback" not in log.read_text()
    assert not (out / io.REPORT_MD).exists()
