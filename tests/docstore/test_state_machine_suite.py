"""trioraft's StateMachineSuite run against the docstore adapter."""

from __future__ import annotations

from collections.abc import Sequence

from docstore import commands as C
from docstore.state_machine import DocstoreStateMachine, encode_command
from trioraft.statemachine import StateMachine
from trioraft.testing.statemachine_suite import StateMachineSuite


class TestDocstoreConformance(StateMachineSuite):
    async def make_state_machine(self, path: str) -> StateMachine:
        return DocstoreStateMachine(path)

    # Values are bytes in the suite; documents are JSON, so they hold hex.
    def put_command(self, key: str, value: bytes) -> bytes:
        return encode_command(C.put("kv", key, {"v": value.hex()}))

    def get_multi_query(self, keys: Sequence[str]) -> object:
        return {"op": "get_multi", "coll": "kv", "keys": list(keys)}

    def values_of(self, result: object) -> list[bytes | None]:
        assert isinstance(result, dict) and result["ok"], result
        return [None if d is None else bytes.fromhex(d["v"]) for d in result["value"]]

    def cas_command(self, key: str, expected: bytes | None, new: bytes) -> bytes | None:
        cond = {"if_exists": False} if expected is None else {"if_match": {"v": expected.hex()}}
        return encode_command(C.put("kv", key, {"v": new.hex()}, **cond))  # type: ignore[arg-type]

    def cas_succeeded(self, result: object) -> bool:
        assert isinstance(result, dict)
        return result["ok"] is True

    async def crash(self, sm: StateMachine) -> None:
        assert isinstance(sm, DocstoreStateMachine)
        if sm._log is not None:
            sm._log.close()  # release the descriptor without flushing
