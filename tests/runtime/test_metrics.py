"""The node's figures for monitoring: histograms, counters, and their Prometheus text."""

from __future__ import annotations

from pathlib import Path

import pytest

from trioraft.kv import encode_command
from trioraft.runtime.metrics import Exposition, Histogram, node_metrics

from .conftest import virtual_time
from .helpers import open_cluster


def test_histogram_puts_a_value_equal_to_a_bound_in_that_bucket() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    s = h.snapshot()
    assert s.counts == (2, 2, 1)
    assert s.count == 5 and s.sum == pytest.approx(8.65)
    assert s.quantile(0.4) == 0.1 and s.quantile(0.8) == 1.0


def test_exposition_writes_cumulative_buckets_and_escapes_labels() -> None:
    h = Histogram((0.1, 1.0))
    h.observe(0.05)
    h.observe(0.5)
    e = Exposition()
    e.histogram("x_seconds", "help", [({"a": 'q"\\\n'}, h.snapshot())])
    e.counter("y_total", "a\nb", [({}, 3)])
    assert e.text().splitlines() == [
        "# HELP x_seconds help",
        "# TYPE x_seconds histogram",
        'x_seconds_bucket{a="q\\"\\\\\\n",le="0.1"} 1',
        'x_seconds_bucket{a="q\\"\\\\\\n",le="1.0"} 2',
        'x_seconds_bucket{a="q\\"\\\\\\n",le="+Inf"} 2',
        'x_seconds_sum{a="q\\"\\\\\\n"} 0.55',
        'x_seconds_count{a="q\\"\\\\\\n"} 2',
        "# HELP y_total a\\nb",
        "# TYPE y_total counter",
        "y_total 3",
    ]
    with pytest.raises(ValueError, match="twice"):
        e.counter("y_total", "again", [])
    with pytest.raises(ValueError, match="_total"):
        e.counter("z", "no suffix", [])


@virtual_time(120)
async def test_statistics_and_status_count_proposals_elections_latencies_and_failures(
    tmp_path: Path,
) -> None:
    async with open_cluster(tmp_path, 3) as (c, leader):
        for i in range(5):
            await leader.propose(encode_command("put", f"k{i}", value=b"v"))
        await leader.read({"op": "get", "key": "k0"}, consistency="linearizable")
        await leader.read({"op": "get", "key": "k0"}, consistency="local")
        st = leader.statistics()
        assert st.role == "leader" and st.proposals_committed == 5
        assert set(st.peers) == set(c.ids) - {leader.id}
        assert all(p.state == "replicate" and p.lag >= 0 for p in st.peers.values())
        assert st.proposal_latency_ms["p50"] > 0
        status = leader.status()
        assert status.leader_id == leader.id and status.applied_index == status.commit_index
        assert st.elections_started >= 1 and st.elections_won == 1
        assert st.leader_changes == 1 and st.leader_id == leader.id
        assert st.proposal_seconds.count == 5
        assert st.read_seconds["linearizable"].count == 1
        assert st.read_seconds["local"].count == 1 and st.read_seconds["lease"].count == 0
        assert st.persist_seconds.count >= 5  # every append was made durable
        assert st.proposals_failed == {"replaced": 0, "timeout": 0, "stopped": 0}
        assert st.last_index >= st.commit_index >= 6

        old = leader.id
        follower = next(n for n in c.nodes.values() if n is not leader)
        await c.stop(old)
        new = await c.wait_for_leader(exclude=frozenset({old}))
        await follower.wait_applied(new.status().commit_index)
        fst = follower.statistics()
        assert fst.leader_changes == 2  # the first leader, then the new one

        text = node_metrics(new.statistics()).text()
        assert f'trioraft_role{{node="{new.id}",role="leader"}} 1' in text
        assert f'trioraft_elections_won_total{{node="{new.id}"}} 1' in text
        assert f'trioraft_follower_lag_entries{{node="{new.id}",peer="{old}"}}' in text


@virtual_time(120)
async def test_a_proposal_that_times_out_is_counted(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, 3) as (c, leader):
        for n in c.nodes.values():
            if n is not leader:
                c.network.isolate(n.id)
        with pytest.raises(TimeoutError):
            await leader.propose(encode_command("put", "lost", value=b"v"))
        assert leader.statistics().proposals_failed["timeout"] == 1
