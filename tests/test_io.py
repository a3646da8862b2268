"""io.py: JSON-safe values, atomic writes with ordinary permissions."""

import json
import math
import os
import stat

import numpy as np
import torch

from midblock_plugin import io


def test_json_safe_values():
    doc = {
        "nan": float("nan"),
        "inf": math.inf,
        "np": np.float32(0.5),
        "t": torch.tensor(2),
        "tuple": (1, 2),
        "path": io.artifact("run", io.PLAN_JSON),
    }
    assert io.json_safe(doc) == {
        "nan": None,
        "inf": None,
        "np": 0.5,
        "t": 2,
        "tuple": [1, 2],
        "path": "run/midblock/plan.json",
    }
    json.loads(io.to_json(doc))  # strict JSON: no NaN literal


def test_atomic_write_leaves_no_temporary_and_a_readable_file(tmp_path):
    path = io.write_json(tmp_path / "sub" / "x.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600


def test_a_run_that_fails_on_a_full_disk_reports_its_own_error_not_the_status_write(tmp_path, monkeypatch):
    """The disk that failed the run also fails writing 'incomplete': the run's error propagates (not
    the status write's), the lock is released, and the stale 'running' record reads as incomplete once the process is gone."""
    import errno

    import pytest

    messages = []
    run = io.RunDirectory(tmp_path / "run", log=messages.append)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RuntimeError, match="the run's own failure"):
        with run:
            run.start()
            monkeypatch.setattr(io, "write_json", full)
            raise RuntimeError("the run's own failure")
    monkeypatch.undo()
    assert len(messages) == 1 and "could not record the run's end" in messages[0] and "No space left" in messages[0]
    assert json.loads((tmp_path / "run" / io.RUN_STATUS_JSON).read_text())["status"] == io.RUNNING
    with io.RunDirectory(tmp_path / "run", overwrite=True) as again:  # the lock was released
        assert again.previous["status"] == io.RUNNING  # read as incomplete once this process is gone
