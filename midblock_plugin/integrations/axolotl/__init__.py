"""Axolotl integration: ``adapter: midblock``. See README.md in this folder.

* ``plugin.py``: :class:`MidBlockPlugin`, the Axolotl hooks (imports Axolotl);
* ``args.py``: :class:`MidBlockArgs`, the YAML keys as a pydantic model;
* ``keys.py``: the YAML key <-> ``MidBlockConfig`` / ``EvalSettings`` field mapping, and the
  core's errors spelled with the YAML keys;
* ``validate.py``: the checks of a raw config (unknown and contradictory keys, how YAML typed a value);
* ``axolotl_compat.py``: what the plugin reproduces of Axolotl's own behaviour (its defaults,
  its schema's types, its bitsandbytes config and training dtype).

Only re-exports :class:`MidBlockPlugin`, lazily, so that ``.args``, ``.keys``, ``.validate`` and
``.axolotl_compat`` (pydantic and the midblock core only) import without Axolotl installed. The short plugin path
``midblock_plugin.axolotl.MidBlockPlugin`` names the same class.
"""

from typing import Any


__all__ = ["MidBlockPlugin"]


def __getattr__(name: str) -> Any:
    if name == "MidBlockPlugin":
        from midblock_plugin.integrations.axolotl.plugin import MidBlockPlugin

        return MidBlockPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
