"""What a docstore client and a docstore node agree on, in one small module.

Owns the constants both sides need: the client id ``docstore.connect``
authenticates as by default, the command that opens a session, and how long
an unused session lives.  The client imports these from here rather than
from the server or the state machine, so ``import docstore`` (the client)
does not load the node's code.  docs/protocol.md describes the sessions.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["DEFAULT_CLIENT", "OPEN_SESSION", "SESSION_TTL_MS"]

#: The client id ``docstore.connect`` authenticates as unless told otherwise.
DEFAULT_CLIENT: Final = "docstore"

OPEN_SESSION: Final[dict[str, Any]] = {"op": "open_session"}
"""The command of a session's registration entry (``sequence`` 0)."""

SESSION_TTL_MS: Final = 3_600_000
"""A session unused for this long (by the entries' leader timestamps) expires.  A
constant, not a setting: every replica must expire the same sessions."""
