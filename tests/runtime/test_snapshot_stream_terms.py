"""A leader's snapshot stream lives no longer than the term it was started in.

A follower refuses the chunks of an earlier term and acknowledges offset 0.
Each acknowledgement reset the stream's failure count, so a stream started
in term T ran on for ever once the follower had moved past T; and a node
streams to a follower once at a time, so when the same node led again in a
later term it could not start a new stream, and the follower never caught
up (found by the whole-node simulator: seed 7 of its first schedule, with
the ``sessions_ignored`` defect, which only changes the timing).
"""

from __future__ import annotations

import pathlib

import trio
import trio.testing

from trioraft.kv import encode_command
from trioraft.testing.cluster import MemoryCluster
from trioraft.transport.memory import MemoryNetwork

# A snapshot every 20 entries, sent 1 KiB at a time over 10 ms links: a
# stream of about 90 KB takes some 20 round trips, far longer than two
# leadership transfers.
SLOW_STREAMS = dict(snapshot_entries=20, snapshot_keep_entries=2, snapshot_chunk_bytes=1024)


async def test_a_leader_again_in_a_later_term_streams_its_snapshot_anew(
    tmp_path: pathlib.Path, mock_time: trio.testing.MockClock
) -> None:
    net = MemoryNetwork(seed=1, delay=0.01)
    async with MemoryCluster(tmp_path, 3, network=net, **SLOW_STREAMS) as c:
        with trio.fail_after(60):
            leader = await c.wait_for_leader()
            victim, other = (n for n in c.ids if n != leader.id)
            # The victim falls behind the leader's log start: only a snapshot helps.
            await c.stop(victim)
            for i in range(45):
                await leader.propose(encode_command("put", f"k{i}", value=b"v" * 2000))
            while leader.status().snapshot_index < 30:  # noqa: ASYNC110 - the snapshot task
                await trio.sleep(0.01)
            node = await c.start(victim)
            # Polled until the stream of this term has begun (no event marks it).
            while victim not in leader._snap_senders:  # noqa: ASYNC110
                await trio.sleep(0.001)
            term = leader.status().term

            # Node 'other' leads one term, then the leader leads again.
            await leader.transfer_leadership(other)
            await c.nodes[other].transfer_leadership(leader.id)
            assert leader.is_leader and leader.status().term == term + 2
            assert node.status().applied_index < 30, "caught up already: nothing to show"

        # The victim, now in the leader's new term, refuses the old stream's
        # chunks; the leader must end that stream and start one of this term.
        with trio.fail_after(30):
            await node.wait_applied(leader.status().commit_index)
