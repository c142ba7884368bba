"""Extensions: user collection types and named, versioned command handlers.

The *code* lives in a :class:`Registry` handed to ``docstore.open`` or to the
state machine adapter.  Which names and versions are *in force* is part of the
replicated state (``register`` commands, recorded in snapshots), so a command
naming an extension that is not registered there, or naming another version,
fails with the same error result on every replica.  A replica whose registry
lacks the code for an extension in force raises :class:`RegistryError`
instead of guessing: that stops its apply loop until the code is deployed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol, TypeVar

from docstore.engine.errors import InvalidCommandError, RegistryError
from docstore.engine.values import check_name


class CollectionType:
    """Base class of user collection types.

    Override :meth:`validate` to refuse documents (raise
    :class:`docstore.ValidationError`) and :meth:`compute` to derive fields
    that indexes and filters can use but that are not stored.  Both must be
    deterministic: they run during apply on every replica.

    Example:
        >>> class Users(CollectionType):
        ...     name = "users"
        ...     version = 1
        ...     def compute(self, doc):
        ...         return {"email_lower": str(doc.get("email", "")).lower()}
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def validate(self, doc: dict[str, Any]) -> None:
        """Raise ValidationError if ``doc`` is not acceptable."""

    def compute(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Computed fields of ``doc`` (visible to filters and indexes)."""
        return {}

    @property
    def has_computed(self) -> bool:
        return type(self).compute is not CollectionType.compute


class CommandContext(Protocol):
    """What a command handler sees: reads of the state as of this command."""

    rev: int
    now_ms: int

    def get(self, coll: str, key: str) -> dict[str, Any] | None: ...

    def find(self, coll: str, flt: object = None) -> list[dict[str, Any]]: ...


CommandHandler = Callable[[CommandContext, Any], list[dict[str, Any]]]
"""``handler(ctx, args) -> [command, ...]``: the commands to apply atomically."""

_T = TypeVar("_T")


class Registry:
    """Extension code known to this process.

    Example:
        >>> reg = Registry()
        >>> reg.register_command("transfer", 1, lambda ctx, args: [])
    """

    def __init__(self) -> None:
        # Several versions of one name may be registered at once: the state in
        # force may still name the old one while an upgrade is being applied.
        self._types: dict[tuple[str, int], CollectionType] = {}
        self._commands: dict[tuple[str, int], CommandHandler] = {}

    def register_type(self, ctype: CollectionType) -> None:
        name = check_name(ctype.name, "collection type")
        _check_version(ctype.version)
        self._types[name, ctype.version] = ctype

    def register_command(self, name: str, version: int, handler: CommandHandler) -> None:
        check_name(name, "command")
        _check_version(version)
        if not callable(handler):
            raise TypeError("a command handler must be callable")
        self._commands[name, version] = handler

    def local_versions(self) -> dict[str, dict[str, int]]:
        """``{"types": {name: version}, "commands": {name: version}}``, newest versions."""
        out: dict[str, dict[str, int]] = {"types": {}, "commands": {}}
        for kind, table in (("types", self._types), ("commands", self._commands)):
            for name, version in sorted(table):
                out[kind][name] = version
        return out

    def has(self, kind: str, name: str, version: int) -> bool:
        """Whether this process holds the code of ``kind`` (``"type"``/``"command"``)
        ``name`` at ``version``."""
        table: dict[tuple[str, int], Any] = self._types if kind == "type" else self._commands
        return (name, version) in table

    def has_type(self, name: str) -> bool:
        """Whether this process holds any version of collection type ``name``."""
        return any(n == name for n, _ in self._types)

    def type(self, name: str, version: int) -> CollectionType:
        return _in_force(self._types, "collection type", name, version)

    def command(self, name: str, version: int) -> CommandHandler:
        return _in_force(self._commands, "command", name, version)


def _in_force(table: dict[tuple[str, int], _T], what: str, name: str, version: int) -> _T:
    """The code of ``what`` ``name`` at ``version``, which the replicated state has in
    force; :class:`RegistryError` (naming the versions held) if this process lacks it."""
    code = table.get((name, version))
    if code is None:
        versions = sorted(v for n, v in table if n == name)
        held = f"versions {versions}" if versions else "none"
        raise RegistryError(
            f"{what} {name!r} version {version} is in force but this process registered {held}"
        )
    return code


def _check_version(v: object) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise InvalidCommandError(f"extension versions are positive integers, got {v!r}")
