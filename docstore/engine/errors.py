"""docstore errors, and their plain-data form.

The engine never raises for a bad or failed command: it returns an *error
result*, a plain map ``{"ok": False, "error": CODE, "message": ..., "rev": ...}``
that is identical on every replica and can cross the wire.  The client side
(:class:`docstore.Database`) turns it back into the exception below with
:func:`raise_for_result`.
"""

from __future__ import annotations

from typing import Any


class DocstoreError(Exception):
    """Base class of every docstore error."""

    code = "error"

    def __init__(self, message: str, *, rev: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.rev = rev

    def to_result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": False, "error": self.code, "message": self.message}
        if self.rev is not None:
            out["rev"] = self.rev
        return out


class ConflictError(DocstoreError):
    """A write condition (``if_rev``, ``if_exists``, ``if_match``) failed.

    ``rev`` is the document's current revision (0 when it does not exist).
    """

    code = "conflict"


class UniqueViolation(DocstoreError):
    """A write would give two documents the same value in a unique index."""

    code = "unique_violation"


class NotFoundError(DocstoreError):
    """The document or collection does not exist (patch without upsert, drop of nothing)."""

    code = "not_found"


class InvalidCommandError(DocstoreError):
    """The command, filter, patch or document is malformed."""

    code = "invalid"


class LimitError(InvalidCommandError):
    """A document, key, nesting depth or index count exceeds the configured limit."""

    code = "limit"


class ValidationError(InvalidCommandError):
    """A document was refused by its collection type's validator."""

    code = "validation"


class UnknownCommandError(InvalidCommandError):
    """The command names an operation or extension not registered (or another version)."""

    code = "unknown_command"


class DuplicateRequestError(DocstoreError):
    """A client session sent a sequence number older than its last applied one."""

    code = "stale_sequence"


class SessionExpiredError(DocstoreError):
    """The write's session is not open (expired, evicted or never opened).

    The write was not applied now, but an earlier attempt of it may have been:
    its outcome is unknown.  Open a new session for further writes.
    """

    code = "session_expired"


class ResyncRequired(DocstoreError):
    """A watcher fell behind (or asked for history no longer kept): read again, re-watch."""

    code = "resync_required"


class CorruptionError(DocstoreError):
    """A data or snapshot file is damaged before its tail (names the file and offset)."""

    code = "corruption"


class RegistryError(DocstoreError):
    """The replicated state needs an extension this process did not register.

    Opening or restoring a state that names such an extension raises it
    (deploy the code, then restart).  A command that would need it (``register``
    or ``call`` of code this node lacks, or a ``create_collection`` of a type in
    force whose code is gone) is answered with it as an error result instead.
    """

    code = "registry"


class InternalError(DocstoreError):
    """A bug: applying the command failed unexpectedly; nothing was changed.

    Reported as an error result (the same on every replica running the same
    code) rather than stopping the node; the node logs the traceback.
    """

    code = "internal"


class DatabaseClosedError(DocstoreError):
    """The database is closed, or failed (an fsync error is fatal)."""

    code = "closed"


_BY_CODE: dict[str, type[DocstoreError]] = {
    cls.code: cls
    for cls in (
        DocstoreError,
        ConflictError,
        UniqueViolation,
        NotFoundError,
        InvalidCommandError,
        LimitError,
        ValidationError,
        UnknownCommandError,
        DuplicateRequestError,
        SessionExpiredError,
        ResyncRequired,
        CorruptionError,
        RegistryError,
        InternalError,
        DatabaseClosedError,
    )
}


def is_error(result: object) -> bool:
    """True if ``result`` is an engine error result."""
    return isinstance(result, dict) and result.get("ok") is False


def error_from_result(result: dict[str, Any]) -> DocstoreError:
    """The exception an error result stands for."""
    cls = _BY_CODE.get(str(result.get("error")), DocstoreError)
    rev = result.get("rev")
    exc = cls(str(result.get("message", "")), rev=rev if isinstance(rev, int) else None)
    if "index" in result:
        exc.add_note(f"in batch command #{result['index']}")
    return exc


def raise_for_result(result: object) -> dict[str, Any]:
    """Return ``result`` if it is a success map, else raise the error it carries."""
    if not isinstance(result, dict):
        raise DocstoreError(f"malformed result {result!r}")
    if result.get("ok") is False:
        raise error_from_result(result)
    return result
