"""Training hooks, framework-agnostic: the ``MidBlockCallback`` (an HF ``TrainerCallback``
shared by every integration), backward truncation and the per-layer drift monitor."""

from midblock_plugin.training.callback import MidBlockCallback  # noqa: F401
from midblock_plugin.training.drift import DriftMonitor  # noqa: F401
from midblock_plugin.training.truncation import BackwardTruncation  # noqa: F401
