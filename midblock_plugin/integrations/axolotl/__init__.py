"""Axolotl integration: ``adapter: midblock``. See README.md in this folder.

* ``plugin.py``: :class:`MidBlockPlugin`, the Axolotl hooks (imports Axolotl);
* ``args.py``: :class:`MidBlockArgs`, the YAML keys as a pydantic model;
* ``keys.py``: the YAML key <-> ``MidBlockConfig`` mapping and the config checks.

Only re-exports :class:`MidBlockPlugin`, lazily, so that ``.args`` and ``.keys`` (pydantic
and the midblock core only) import without Axolotl installed. The short plugin path
``midblock_plugin.axolotl.MidBlockPlugin`` names the same class.
"""

from typing import Any


__all__ = ["MidBlockPlugin"]


def __getattr__(name: str) -> Any:
    if name == "MidBlockPlugin":
        from midblock_plugin.integrations.axolotl.plugin import MidBlockPlugin

        return MidBlockPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
