"""Opening an embedded directory written before the one storage format.

Until then ``docstore.open`` kept its own file, ``DIR/data.dslog``: records
``{"r": rev, "fx": effects}`` replayed on open, no base snapshot.  Embedded
directories now hold what a node's state machine holds (``base.snap`` and
``apply.dslog``, see :mod:`docstore.state_machine`).  :func:`migrate` turns
the old layout into the new one on open:

1. replay ``data.dslog`` (a torn tail is cut as before; damage is a
   :class:`~docstore.CorruptionError` naming the file, and nothing changes);
2. write the state as ``base.snap`` at index = its last revision (term 0,
   generation 1), atomically: temp file, fsync, rename, fsync directory;
3. delete ``data.dslog`` and fsync the directory.

A crash between 2 and 3 leaves both files: the base was written from the
whole data file, so the next open only finishes step 3.  Revisions are kept,
so documents keep their ``_rev`` and ``Database.rev`` goes on from the last.
"""

from __future__ import annotations

import os

from docstore.engine.registry import Registry
from docstore.engine.state import Engine
from docstore.engine.values import Limits
from docstore.storage import snapshot as snap
from docstore.storage.datafile import DataFile
from docstore.storage.records import fsync_dir, write_atomic

DATA_FILE = "data.dslog"
BASE = "base.snap"


def migrate(directory: str, registry: Registry | None, limits: Limits) -> bool:
    """Turn an old embedded directory into the state machine's layout (blocking).

    Returns whether there was anything to migrate.
    """
    old = os.path.join(directory, DATA_FILE)
    if not os.path.exists(old):
        return False
    base = os.path.join(directory, BASE)
    if not os.path.exists(base):
        engine = Engine(registry, limits)
        rev = 0
        f = DataFile(old)
        try:
            for rec in f.load():
                engine.replay(rec["fx"])
                rev = max(rev, rec["r"])
        finally:
            f.close()
        chunks, _, _ = snap.encode(engine, rev, 0, 1, [])
        write_atomic(base, chunks)
    for leftover in (old + ".tmp", old):
        if os.path.exists(leftover):
            os.unlink(leftover)
    fsync_dir(directory)
    return True
