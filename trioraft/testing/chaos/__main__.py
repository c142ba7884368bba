import sys

from trioraft.testing.chaos.cli import main

sys.exit(main())
