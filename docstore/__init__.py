"""docstore: a replicated, append-only JSON document database.

Embedded::

    async with docstore.open("data/app") as db:
        users = db.collection("users")
        await users.put("ann", {"name": "Ann", "age": 31})
        adults = await users.find({"age": {"$gte": 18}}, sort="-age")

A client of a cluster (``docstore cluster`` starts one), the same API::

    async with docstore.connect(["127.0.0.1:7101"], token=TOKEN) as db:
        await db.collection("users").put("ann", {"name": "Ann"})

Replicated: :class:`docstore.state_machine.DocstoreStateMachine` is the
trioraft state machine.  Commands are plain maps (:mod:`docstore.commands`).
"""

from docstore.client import (
    BackupChunk,
    BackupInterruptedError,
    ClusterError,
    ForbiddenError,
    NotSupportedRemotely,
    RemoteDatabase,
    UnavailableError,
    connect,
)
from docstore.database import (
    ChangeStream,
    Collection,
    Database,
    Executor,
    LocalExecutor,
    open,
)
from docstore.engine import commands
from docstore.engine.errors import (
    ConflictError,
    CorruptionError,
    DatabaseClosedError,
    DocstoreError,
    DuplicateRequestError,
    InvalidCommandError,
    LimitError,
    NotFoundError,
    RegistryError,
    ResyncRequired,
    SessionExpiredError,
    UniqueViolation,
    UnknownCommandError,
    ValidationError,
)
from docstore.engine.registry import CollectionType, CommandContext, Registry
from docstore.engine.values import Limits
from docstore.watch import Watcher

__all__ = [
    "BackupChunk",
    "BackupInterruptedError",
    "ChangeStream",
    "ClusterError",
    "Collection",
    "CollectionType",
    "CommandContext",
    "ConflictError",
    "CorruptionError",
    "Database",
    "DatabaseClosedError",
    "DocstoreError",
    "DuplicateRequestError",
    "Executor",
    "ForbiddenError",
    "InvalidCommandError",
    "LimitError",
    "Limits",
    "LocalExecutor",
    "NotFoundError",
    "NotSupportedRemotely",
    "Registry",
    "RegistryError",
    "RemoteDatabase",
    "ResyncRequired",
    "SessionExpiredError",
    "UnavailableError",
    "UniqueViolation",
    "UnknownCommandError",
    "ValidationError",
    "Watcher",
    "commands",
    "connect",
    "open",
]
