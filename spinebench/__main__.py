"""``python -m spinebench`` is the ``spinebench`` command."""

import sys

from spinebench.benchmark.cli import main

sys.exit(main())
