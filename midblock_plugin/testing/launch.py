"""Multi-process runs on one machine for tests and benchmarks: free ports, several "nodes"
started at once, and the comparison of their adapter with a single process's."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_nodes(commands: list[tuple[list[str], dict]], cwd: Path | str, logs: Path, timeout_s: float = 600) -> str:
    """Start every ``(command, env)`` at once, each in its own process group, and wait for all.
    If one fails, or time runs out, the others are killed (a node left alone would wait for its
    peer). Returns the output of all of them; asserts that all exited 0."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, (cmd, env) in enumerate(commands):
        log = open(logs / f"node{i}.log", "w")
        procs.append(
            (
                subprocess.Popen(
                    cmd,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ),
                log,
            )
        )
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for p, _ in procs):
        if any(p.returncode not in (None, 0) for p, _ in procs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for p, log in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        log.close()
    text = "\n".join(
        f"--- node {i} (exit {p.returncode})\n" + (logs / f"node{i}.log").read_text() for i, (p, _) in enumerate(procs)
    )
    assert all(p.returncode == 0 for p, _ in procs), text[-6000:]
    return text


def adapter_difference(out: Path, single: Path, layers: set[int], atol: float) -> float:
    """Assert that the adapter in ``out`` has full-size tensors on exactly ``layers``, trained
    (some LoRA B moved from zero), and equals the one in ``single`` to ``atol``; return the
    largest difference."""
    from safetensors.torch import load_file

    a, b = load_file(out / "adapter_model.safetensors"), load_file(single / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    found = {int(k.split(".layers.")[1].split(".")[0]) for k in a}
    assert found == layers, (found, layers)
    worst = 0.0
    for k in a:
        assert a[k].shape == b[k].shape and a[k].numel() > 0, k  # full shapes, not ZeRO-3 partitions
        worst = max(worst, (a[k] - b[k]).abs().max().item())
    assert worst <= atol, worst
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # it trained
    print(f"{out.name}: max |{out.name} - 1 process| = {worst:.3g}")
    return worst


@contextlib.contextmanager
def hold_run_directory(path: str | os.PathLike):
    """Another process that holds ``path``'s run lock and records ``running`` (a concurrent run), for
    as long as the ``with`` block lasts; yields its ``Popen`` (its ``pid`` is what errors name)."""
    root = Path(__file__).resolve().parents[2]  # this checkout, whatever the caller's sys.path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
    code = (
        "import sys, time; from midblock_plugin import io; "
        "r = io.RunDirectory(sys.argv[1]).acquire(); r.start(); print('ready', flush=True); time.sleep(300)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        if holder.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the process meant to hold {path} exited with {holder.wait()}")
        yield holder
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
