"""``python -m midblock_plugin.cli``: the ``midblock`` command."""

import sys

from midblock_plugin.cli import main


sys.exit(main())
