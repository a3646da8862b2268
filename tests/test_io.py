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
