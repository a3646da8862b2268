"""``python -m midblock_plugin.testing DIR``: save a tiny random model and tokenizer (see ``tiny.main``)."""

import sys

from midblock_plugin.testing.tiny import main


sys.exit(main())
