"""The short plugin path for Axolotl: ``plugins: [midblock_plugin.axolotl.MidBlockPlugin]``.

The same class as ``midblock_plugin.integrations.axolotl.MidBlockPlugin`` (where the
integration lives, see its README.md). Axolotl resolves a plugin name by importing the
module part and getting the class from it, so this module re-exports the class, lazily:
importing ``midblock_plugin.axolotl`` does not import Axolotl until ``MidBlockPlugin`` is
accessed.
"""

from typing import Any


__all__ = ["MidBlockPlugin"]


def __getattr__(name: str) -> Any:
    if name == "MidBlockPlugin":
        from midblock_plugin.integrations.axolotl.plugin import MidBlockPlugin

        return MidBlockPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
