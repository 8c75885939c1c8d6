"""``python -m registry``: the same as the ``ccr-registry`` command."""

import sys

from registry._entry import main

sys.exit(main())
