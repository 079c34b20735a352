"""``python -m devinet``: the ``devinet`` command (also under ``torchrun -m devinet``)."""

import sys

from devinet.cli import main

sys.exit(main())
