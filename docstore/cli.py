"""The ``docstore`` command."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``docstore`` command."""
    args = sys.argv[1:] if argv is None else argv
    print(
        "docstore: the cluster command is not built yet "
        f"(asked for: {' '.join(args) or 'nothing'}); see README.md for what works today.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
