"""The one table of the Axolotl YAML keys (docs/axolotl.md, "### Keys") lists exactly the
fields of ``MidBlockArgs``, maps each key to the ``MidBlockConfig`` field the plugin sets,
states the defaults an Axolotl config without the key gets, and describes every value of each
closed choice (the ``Literal`` types of ``midblock_plugin.choices``, which ``MidBlockArgs`` uses).

Needs the midblock core only (no Axolotl; pydantic for ``MidBlockArgs``), so it runs in the main suite.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from midblock_plugin import choices
from midblock_plugin.config import MidBlockConfig
from midblock_plugin.integrations.axolotl.keys import (
    AXOLOTL_KEYS,
    AXOLOTL_TARGET_KEYS,
    EXTRA_KEYS,
    KEY_PREFIX,
    MIDBLOCK_KEYS,
    midblock_config_from_cfg,
)
from midblock_plugin.window import DEFAULT_WINDOW


DOC = Path(__file__).resolve().parents[1] / "docs" / "axolotl.md"
CONFIG_FIELDS = {f.name for f in dataclasses.fields(MidBlockConfig)}


def _key_tables() -> dict[str, list[dict[str, str]]]:
    """The tables of the "### Keys" section, by the header of their first column."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"^### Keys\n(.*?)(?=^#{1,3} )", text, flags=re.S | re.M)
    assert match, f"{DOC} has no '### Keys' section"
    tables: dict[str, list[dict[str, str]]] = {}
    for block in re.findall(r"(?:^\|.*\|\n)+", match.group(1), flags=re.M):
        lines = block.strip().splitlines()
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
        tables[header[0]] = rows
    return tables


def _code(cell: str) -> str:
    """The one backticked name of a cell (``—`` = none)."""
    m = re.fullmatch(r"`([^`]+)`|—", cell)
    assert m, f"expected one `name` or — in the cell {cell!r}"
    return m.group(1) or ""


def _literal(cell: str):
    """A default written as one YAML literal (`true`, `16`, `"0.2:0.8"`, `lora`), else a marker
    meaning "described in words" (not compared)."""
    m = re.fullmatch(r"`([^`]+)`", cell)
    if not m:
        return _WORDS
    text = m.group(1)
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d*", text):
        return float(text)
    if re.fullmatch(r'"[^"]*"', text):
        return text[1:-1]
    if re.fullmatch(r"[a-z][a-z-]*", text):
        return text
    return _WORDS


_WORDS = object()


@pytest.fixture(scope="module")
def tables():
    found = _key_tables()
    assert set(found) == {"plugin key", "Axolotl key"}, sorted(found)
    return found


def test_plugin_key_table_lists_exactly_the_fields_of_midblock_args(tables):
    pytest.importorskip("pydantic")
    from midblock_plugin.integrations.axolotl.args import MidBlockArgs

    keys = [_code(row["plugin key"]) for row in tables["plugin key"]]
    assert len(keys) == len(set(keys)), keys
    assert set(keys) == set(MidBlockArgs.model_fields)
    assert keys == list(MidBlockArgs.model_fields)  # in the model's order
    assert set(MidBlockArgs.model_fields) == set(MIDBLOCK_KEYS) | set(EXTRA_KEYS)


def test_each_midblock_key_maps_to_its_midblock_config_field(tables):
    for row in tables["plugin key"]:
        key, field = _code(row["plugin key"]), _code(row["`MidBlockConfig` field"])
        if key in EXTRA_KEYS:
            assert field == "", f"{key} is not a MidBlockConfig field"
            continue
        assert field in CONFIG_FIELDS, f"{key}: {field!r} is not a MidBlockConfig field"
        assert key == KEY_PREFIX + field and MIDBLOCK_KEYS[key] == field, key
    # every MidBlockConfig field is set by exactly one plugin key or Axolotl key
    assert sorted([*MIDBLOCK_KEYS.values(), *AXOLOTL_KEYS.values()]) == sorted(CONFIG_FIELDS)


def test_axolotl_key_table_lists_the_axolotl_keys_the_plugin_reads(tables):
    rows = {_code(row["Axolotl key"]): _code(row["`MidBlockConfig` field"]) for row in tables["Axolotl key"]}
    assert set(rows) == set(AXOLOTL_KEYS) | set(AXOLOTL_TARGET_KEYS)
    for key, field in rows.items():
        assert field == AXOLOTL_KEYS.get(key, "target_modules"), key
    assert midblock_config_from_cfg({"adapter": "midblock", "lora_target_modules": ["q_proj"]}).target_modules == [
        "q_proj"
    ]
    assert midblock_config_from_cfg({"adapter": "midblock", "lora_target_linear": True}).target_modules == "all-linear"


@pytest.mark.parametrize("table", ["plugin key", "Axolotl key"])
def test_defaults_in_the_table_are_what_an_axolotl_config_without_the_key_gets(tables, table):
    effective = midblock_config_from_cfg({"adapter": "midblock"})
    compared = 0
    for row in tables[table]:
        field = _code(row["`MidBlockConfig` field"])
        expected = _literal(row["default"])
        if not field or expected is _WORDS:
            continue
        assert field in CONFIG_FIELDS, f"{_code(row[table])}: {field!r} is not a MidBlockConfig field"
        actual = getattr(effective, field)
        if field == "window" and actual is None:
            actual = DEFAULT_WINDOW
        if _code(row[table]) == "lora_target_linear":
            actual = actual == "all-linear"
        assert actual == expected, f"{_code(row[table])}: the table says {row['default']}, the plugin uses {actual!r}"
        compared += 1
    assert compared >= 4


#: The closed choices among the keys: key -> its ``Literal`` in :mod:`midblock_plugin.choices`.
CHOICE_KEYS = {
    "midblock_mode": choices.Mode,
    "midblock_budget": choices.Budget,
    "midblock_alpha_policy": choices.AlphaPolicy,
    "midblock_target_modules": choices.TargetPreset,
}


def test_the_choices_in_the_table_are_those_of_midblock_plugin_choices(tables):
    pytest.importorskip("pydantic")
    from midblock_plugin.integrations.axolotl.args import MidBlockArgs

    rows = {_code(row["plugin key"]): row for row in tables["plugin key"]}
    for key, choice in CHOICE_KEYS.items():
        allowed = choices.values(choice)
        assert len(allowed) >= 2, key
        # the pydantic model takes its choices from the same Literal
        assert set(allowed) <= set(choices.values(MidBlockArgs.model_fields[key].annotation)), key
        # the table describes every value (as `value`), and its default is one of them
        described = set(re.findall(r"`([a-z][a-z-]*)`", rows[key]["what it does"]))
        assert set(allowed) <= described, f"{key}: the table does not describe {sorted(set(allowed) - described)}"
        default = _literal(rows[key]["default"])
        assert default is _WORDS or default in allowed, key
    # midblock_eval's closed choices are the EvalSettings Literals too
    eval_args = MidBlockArgs.model_fields["midblock_eval"].annotation
    typed = next(a for a in eval_args.__args__ if hasattr(a, "__annotations__"))
    hints = {name: choices.values(t) for name, t in typed.__annotations__.items()}
    assert hints["protocol"] == choices.values(choices.Protocol)
    assert hints["backend"] == choices.values(choices.Backend)
    assert hints["partitioned_mode"] == choices.values(choices.PartitionedMode)
