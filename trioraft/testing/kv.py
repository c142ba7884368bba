"""Moved to :mod:`trioraft.kv` (the reference key-value state machine is public API).

This name stays importable while callers move over.
"""

from trioraft.kv import KVCorruptError, KVQueryError, KVStateMachine, encode_command

__all__ = ["KVCorruptError", "KVQueryError", "KVStateMachine", "encode_command"]
