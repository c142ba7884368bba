"""The KV machine of :mod:`trioraft.kv` as a chaos system: registers, put, cas, reads.

The default system of a chaos run, and the model for one of your own: a
node is :func:`trioraft.serve_node` with the state machine and a client
service of :func:`trioraft.runtime.generic_service` plus the admin kinds
the nemesis calls (:func:`chaos_service`).

Clients loop over put / get (linearizable or lease) / cas on the run's keys
with unique values.  ``bug="stale-reads"`` runs :class:`StaleKV`, which
answers some reads one write behind: the checks must catch it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, Final

import trio

from trioraft.core.types import Entry
from trioraft.kv import KVStateMachine, encode_command
from trioraft.runtime import ClientService, Node, NodeConfig, Session, generic_service, serve_node
from trioraft.runtime.config import tuning_of
from trioraft.testing.chaos.process import NodeSpec
from trioraft.testing.chaos.router import Router
from trioraft.testing.chaos.run import ChaosRun
from trioraft.transport.messages import ClientRequest

__all__ = ["SYSTEM", "KVSystem", "StaleKV", "chaos_service", "node_config"]

BUGS: Final = ("", "stale-reads")


def node_config(spec: NodeSpec) -> NodeConfig:
    """The trioraft node ``spec`` describes."""
    return NodeConfig(
        node_id=spec.node_id,
        data_dir=f"{spec.data_dir}/raft",
        listen=spec.listen,
        advertise=spec.address,
        peers=spec.peers,
        join=spec.join,
        cluster_id=spec.cluster_id,
        cluster_secret=spec.secret.encode(),
        client_tokens={spec.client_id: spec.token.encode()},
        **tuning_of(spec),
    )


class StaleKV(KVStateMachine):
    """A deliberately broken KV machine: some ``get`` answers the key's previous value.

    Like a replica serving reads from a state one write behind; the chaos
    checks must reject it.
    """

    def __init__(self, path: str, probability: float) -> None:
        super().__init__(path)
        self._previous: dict[str, Any] = {}
        self._stale_rng = random.Random()
        self._probability = probability

    async def apply(self, entries: Sequence[Entry]) -> list[object]:
        before = dict(self._data)
        results = await super().apply(entries)
        for key, value in self._data.items():
            if before.get(key) != value:
                self._previous[key] = before.get(key)
        return results

    async def query(self, query: object) -> object:
        if (
            isinstance(query, dict)
            and query.get("op") == "get"
            and query.get("key") in self._previous
            and self._stale_rng.random() < self._probability
        ):
            return self._previous[query["key"]]
        return await super().query(query)


def chaos_service(node: Node) -> ClientService:
    """The generic service plus what the nemesis calls: admin kinds and ``digest``."""
    service = generic_service(node)
    service.on_call("digest", _digest)
    service.on_call("transfer_leader", _transfer_leader)
    service.on_call("add_learner", _add_learner)
    service.on_call("promote", _promote)
    service.on_call("remove_node", _remove_node)
    return service


def _args(req: ClientRequest) -> dict[Any, Any]:
    return req.payload if isinstance(req.payload, dict) else {}


async def _digest(session: Session, req: ClientRequest) -> object:
    return await session.node.read({"op": "digest"}, consistency="local")


async def _transfer_leader(session: Session, req: ClientRequest) -> object:
    target = _args(req).get("target")
    return await session.node.transfer_leadership(target if isinstance(target, int) else None)


async def _add_learner(session: Session, req: ClientRequest) -> object:
    p = _args(req)
    await session.node.add_learner(int(p["id"]), str(p["address"]))
    return None


async def _promote(session: Session, req: ClientRequest) -> object:
    await session.node.promote(int(_args(req)["id"]))
    return None


async def _remove_node(session: Session, req: ClientRequest) -> object:
    await session.node.remove_node(int(_args(req)["id"]))
    return None


class KVSystem:
    """Registers in :class:`~trioraft.kv.KVStateMachine` (see the module docstring)."""

    name = "trioraft.testing.chaos.kv:SYSTEM"
    spec_settings: Mapping[str, Any] = {}

    async def serve(self, spec: NodeSpec) -> None:
        if spec.bug not in BUGS:
            raise ValueError(f"unknown bug {spec.bug!r} (one of {BUGS})")
        path = f"{spec.data_dir}/kv"
        sm = StaleKV(path, 0.3) if spec.bug == "stale-reads" else KVStateMachine(path)
        await serve_node(node_config(spec), sm, client_service=chaos_service)

    async def client(self, run: ChaosRun, router: Router, w: int) -> None:
        rng = run.rng_for(w)
        last: dict[str, object] = {}
        proc = f"c{w}"
        h = run.history
        while not run.stop_clients:
            key = rng.choice(run.keys)
            r = rng.random()
            if r < 0.4:
                # Half the reads use the leader lease (pitfall 12: a paused or
                # deposed leader must not answer from a stale lease).
                consistency = "lease" if rng.random() < 0.5 else "linearizable"
                handle = h.invoke(proc, key, "read")
                outcome, res = await router.execute(
                    ClientRequest(0, "read", {"op": "get", "key": key}, consistency=consistency),
                    run.o.op_timeout,
                )
                if outcome == "ok":
                    h.ok(handle, res)
                    last[key] = res
                elif outcome == "fail":
                    h.fail(handle)
                else:
                    h.timeout(handle)
                run.report.ops[f"read {outcome}"] += 1
            else:
                value = run.next_value(w).encode()
                if r < 0.7:
                    kind, cmd = "write", encode_command("put", key, value=value)
                    handle = h.invoke(proc, key, "write", value)
                else:
                    kind = "cas"
                    expected = last.get(key)
                    cmd = encode_command("cas", key, expected=expected, value=value)
                    handle = h.invoke(proc, key, "cas", value, expected=expected)
                outcome, res = await router.execute(
                    ClientRequest(0, "propose", cmd), run.o.op_timeout
                )
                if outcome == "ok":
                    if kind == "cas":
                        assert isinstance(res, dict)
                        swapped = res.get("ok") is True
                        h.ok(handle, swapped)
                        last[key] = value if swapped else res.get("value")
                    else:
                        h.ok(handle)
                        last[key] = value
                elif outcome == "fail":
                    h.fail(handle)
                else:
                    h.timeout(handle)
                    last.pop(key, None)
                run.report.ops[f"{kind} {outcome}"] += 1
            await trio.sleep(rng.uniform(0, run.o.think))

    async def final_reads(self, run: ChaosRun, router: Router) -> None:
        for key in run.keys:
            while True:
                handle = run.history.invoke("final", key, "read")
                outcome, res = await router.execute(
                    ClientRequest(0, "read", {"op": "get", "key": key}), 5.0
                )
                if outcome == "ok":
                    run.history.ok(handle, res)
                    run.report.final_values[key] = res
                    break
                run.history.fail(handle)

    def check(self, run: ChaosRun) -> list[str]:
        return []  # the registers say it all


SYSTEM: Final = KVSystem()
