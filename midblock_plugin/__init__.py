"""midblock: Mid-Block Efficient Tuning (Zhao et al., ACL 2026) for TRL, Axolotl and PEFT.

The core (window arithmetic, plans, adapters, training hooks) does not import any
framework integration; integrations live under ``midblock_plugin.integrations``.
"""

__version__ = "0.1.0"

from midblock_plugin.config import MidBlockConfig  # noqa: F401,E402
from midblock_plugin.window import WindowError, resolve_layers  # noqa: F401,E402
