"""Pure document logic: commands, filters, patches, indexes.  No I/O, no clock."""

from docstore.engine.registry import CollectionType, CommandContext, Registry
from docstore.engine.state import Applied, Change, Engine
from docstore.engine.values import DEFAULT_LIMITS, Limits

__all__ = [
    "DEFAULT_LIMITS",
    "Applied",
    "Change",
    "CollectionType",
    "CommandContext",
    "Engine",
    "Limits",
    "Registry",
]
