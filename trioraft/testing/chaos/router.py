"""The harness's clients: one connection per node (to its real port) and a guess at the leader.

:meth:`Router.execute` runs a request on the leader and says what is known
of its outcome: ``ok``, ``fail`` (it did not take effect: every error it saw
proves it was refused before it was accepted) or ``info`` (unknown: a
timeout or a lost connection after it was sent).  :meth:`Router.call_node`
asks one node, for the nemesis' status and admin calls.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import trio

from trioraft.client.connection import (
    ClientConnectionError,
    Connection,
    ConnectionClosedError,
    open_client_connection,
)
from trioraft.transport.messages import ClientRequest, ClientResponse

__all__ = ["ClientError", "Router"]


class ClientError(Exception):
    """An admin call failed (the nemesis ignores most of these)."""


class Router:
    """One client connection per node (to its real port) and a guess at the leader."""

    def __init__(
        self,
        nursery: trio.Nursery,
        addresses: Mapping[int, str],
        seed: int,
        *,
        cluster_id: str,
        client_id: str,
        token: bytes,
    ) -> None:
        self._nursery = nursery
        self._auth = (cluster_id, client_id, token)
        self.addresses = dict(addresses)
        self.leader: int | None = None
        self._conns: dict[int, Connection] = {}
        self._locks = {n: trio.Lock() for n in addresses}
        self._rng = random.Random(seed)
        self.candidates: list[int] = sorted(addresses)

    async def connection(self, n: int) -> Connection:
        c = self._conns.get(n)
        if c is not None and not c.closed:
            return c
        async with self._locks[n]:
            c = self._conns.get(n)
            if c is not None and not c.closed:
                return c
            conn: Connection = await self._nursery.start(self._hold, n)
            return conn

    async def _hold(self, n: int, task_status: trio.TaskStatus[Connection]) -> None:
        started = False
        try:
            async with open_client_connection(
                self.addresses[n],
                cluster_id=self._auth[0],
                client_id=self._auth[1],
                token=self._auth[2],
                connect_timeout=1.0,
                send_timeout=2.0,
            ) as conn:
                self._conns[n] = conn
                task_status.started(conn)
                started = True
                while not conn.closed:  # noqa: ASYNC110 - a Connection has no closed event
                    await trio.sleep(0.2)
        except ClientConnectionError:
            if not started:
                raise

    def drop(self, n: int) -> None:
        self._conns.pop(n, None)

    async def call_node(self, n: int, req: ClientRequest, within: float) -> ClientResponse | None:
        """One request to one node; None if it could not be reached in time."""
        with trio.move_on_after(within):
            try:
                conn = await self.connection(n)
                return await conn.call(req)
            except ClientConnectionError:
                return None
        return None

    async def execute(self, req: ClientRequest, within: float) -> tuple[str, object]:
        """Run ``req`` on the leader: ``("ok", result)``, ``("fail", code)`` or ``("info", why)``.

        Errors that prove nothing was applied are retried until the deadline;
        once a send may have reached a leader and the answer is lost, the
        outcome is unknown.
        """
        sent = False
        code = "timeout"
        with trio.move_on_after(within):
            while True:
                n = self.leader if self.leader is not None else self._rng.choice(self.candidates)
                try:
                    conn = await self.connection(n)
                except ClientConnectionError:
                    code = "connect"
                    self.leader = None
                    await trio.sleep(0.05)
                    continue
                sent = True
                try:
                    resp = await conn.call(req)
                except ConnectionClosedError:
                    self.leader = None
                    return "info", "connection lost"
                if resp.ok:
                    self.leader = n
                    return "ok", resp.result
                code = resp.error_code
                if code == "not_leader":
                    sent = False
                    self.leader = resp.leader_id if resp.leader_id != n else None
                    if self.leader is None:
                        await trio.sleep(0.05)
                    continue
                if code in ("overloaded", "rejected", "read_failed", "not_caught_up"):
                    sent = False  # refused before it was accepted: safe to retry
                    await trio.sleep(0.05)
                    continue
                if code == "bad_request":
                    return "fail", f"{code}: {resp.error_message}"
                return "info", code  # dropped, timeout, closed, error: it may still apply
        self.leader = None  # a paused or partitioned leader: look again
        return ("info", "timeout") if sent else ("fail", code)
