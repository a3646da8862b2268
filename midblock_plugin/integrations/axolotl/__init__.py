"""Axolotl integration: ``adapter: midblock``. See README.md in this folder.

Only re-exports :class:`MidBlockPlugin`, lazily, so that ``...axolotl.args`` (pydantic and
the midblock core only) imports without Axolotl installed.
"""

from typing import Any

__all__ = ["MidBlockPlugin"]


def __getattr__(name: str) -> Any:
    if name == "MidBlockPlugin":
        from midblock_plugin.integrations.axolotl.plugin import MidBlockPlugin

        return MidBlockPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
