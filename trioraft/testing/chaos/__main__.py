"""``python -m trioraft.testing.chaos``: the chaos run's command line (:mod:`.cli`)."""

import sys

from trioraft.testing.chaos.cli import main

sys.exit(main())
