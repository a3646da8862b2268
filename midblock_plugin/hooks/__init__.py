"""Framework-agnostic training hooks: backward truncation and the per-layer drift monitor."""

from midblock_plugin.hooks.drift import DriftMonitor  # noqa: F401
from midblock_plugin.hooks.truncation import BackwardTruncation  # noqa: F401
