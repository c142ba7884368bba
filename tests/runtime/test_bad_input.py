"""A running cluster shrugs off garbage, strangers and floods, and keeps committing."""

from __future__ import annotations

import os
from pathlib import Path

import trio
import trio_websocket

from tests.transport.wshelpers import fake_dialer
from trioraft.client import open_client_connection
from trioraft.core.types import Heartbeat
from trioraft.kv import encode_command
from trioraft.transport._ws import Closed, HandshakeFailed
from trioraft.transport.codec import encode_frame
from trioraft.transport.messages import ClientRequest

from .realcluster import SECRET, TOKEN, RealCluster


async def commits(c: RealCluster, key: str) -> None:
    leader = await c.leader()
    await leader.propose(encode_command("put", key, value=b"ok"))
    assert await leader.read({"op": "get", "key": key}) == b"ok"


async def attack(address: str, payload: bytes) -> None:
    """Open a TCP connection, send raw bytes, let the node deal with it."""
    host, port = address.rsplit(":", 1)
    with trio.move_on_after(2):
        stream = await trio.open_tcp_stream(host, int(port))
        try:
            await stream.send_all(payload)
            with trio.move_on_after(0.5):
                while await stream.receive_some(4096):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()


async def hello_as(address: str, node_id: int, cluster: str, secret: bytes) -> bool:
    """Try a peer handshake; True if the node accepted it."""
    try:
        async with fake_dialer(
            address, node_id, expect=None, cluster=cluster, secret=secret, max_frame=1 << 20
        ):
            return True
    except (HandshakeFailed, Closed, OSError, trio.TooSlowError, trio.BrokenResourceError):
        return False


async def send_as_peer(
    address: str, peer: int, target: int, max_frame: int, *frames: bytes
) -> None:
    """Authenticate as ``peer`` and send raw ``frames``; the node may hang up on it."""
    try:
        async with fake_dialer(
            address, peer, expect=target, cluster="trioraft", secret=SECRET, max_frame=max_frame
        ) as sock:
            for frame in frames:
                await sock.send(frame)
    except (Closed, trio_websocket.ConnectionClosed, trio.BrokenResourceError):
        pass  # the node hung up on it: expected


async def test_garbage_strangers_and_oversized_frames_do_not_stop_the_cluster(
    tmp_path: Path,
) -> None:
    c = RealCluster(tmp_path)
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            for n in (1, 2, 3):
                await c.start(nursery, n)
            await commits(c, "before")
            target = (await c.leader()).id
            addr = c.addr[target]
            await attack(addr, os.urandom(5000))  # not even HTTP
            await attack(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(100))
            # A real peer's handshake works (so the refusals below mean something).
            assert await hello_as(addr, 1 if target != 1 else 2, "trioraft", SECRET)
            assert not await hello_as(addr, 1 if target != 1 else 2, "other-cluster", SECRET)
            assert not await hello_as(addr, 99, "trioraft", SECRET)  # unknown node id
            assert not await hello_as(addr, 1 if target != 1 else 2, "trioraft", b"wrong")
            # An authenticated peer (it knows the secret) sends an oversized
            # frame and then garbage: only its connection is dropped.
            peer = 1 if target != 1 else 2
            await send_as_peer(
                addr, peer, target, 64 << 20, b"\x00" * (20 << 20), b"\xff\xfe garbage"
            )
            hb = Heartbeat(10**9, peer, target, 10**9, 0)
            await send_as_peer(addr, peer, target, 1 << 20, encode_frame([hb])[:-3])  # truncated
            await commits(c, "after")
            for node in c.nodes.values():
                assert node.status().role in ("leader", "follower")
            assert c.nodes[target].statistics().transport is not None
            nursery.cancel_scope.cancel()


async def test_a_client_flooding_proposals_gets_overloaded_not_oom(tmp_path: Path) -> None:
    c = RealCluster(tmp_path, max_pending=20)
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            for n in (1, 2, 3):
                await c.start(nursery, n)
            leader = await c.leader()
            codes: list[str] = []
            async with open_client_connection(
                c.addr[leader.id], cluster_id="trioraft", client_id="tester", token=TOKEN
            ) as conn:

                async def one(i: int) -> None:
                    req = ClientRequest(
                        0, "propose", encode_command("put", f"f{i}", value=b"x" * 100)
                    )
                    resp = await conn.call(req)
                    codes.append("ok" if resp.ok else resp.error_code)

                async with trio.open_nursery() as flood:
                    for i in range(400):
                        flood.start_soon(one, i)
            assert codes.count("ok") >= 20
            assert "overloaded" in codes
            assert set(codes) <= {"ok", "overloaded"}
            await commits(c, "still-alive")
            nursery.cancel_scope.cancel()
