"""``python -m docstore``: the ``docstore`` command."""

from docstore.cli import main

raise SystemExit(main())
