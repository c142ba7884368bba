"""Chaos testing: real node processes, a fault-injecting proxy on every link, a checker.

The parts, each usable on its own:

* :mod:`.proxy` - one TCP proxy per direction between two nodes, with
  blackhole, reset, delay and flaky faults;
* :mod:`.routes` - inside a node process, Trio's resolver sends the node's
  peer connections through its proxies (no hook in the node needed);
* :mod:`.process` - a node's OS process: start, SIGKILL, SIGSTOP/SIGCONT,
  its wall clock (libfaketime);
* :mod:`.router` - the harness's client connections and leader guess;
* :mod:`.run` - the run: setup, nemesis, clients, heal, final checks, report;
  the :class:`~.run.System` protocol a system under test implements;
* :mod:`.report` - what a run saw and found, and its summary;
* :mod:`.kv` - the default system, :mod:`trioraft.kv`'s machine;
* :mod:`.cli` - ``python -m trioraft.testing.chaos``.

To chaos-test a state machine of your own, write a :class:`~.run.System`
(copy :mod:`.kv`: ``serve`` runs :func:`trioraft.serve_node` with your
machine, ``client`` records register operations) and run
``python -m trioraft.testing.chaos --system yourmodule:SYSTEM``.
"""

from trioraft.testing.chaos.process import NodeProcess, NodeSpec
from trioraft.testing.chaos.proxy import HOST, Link, ProxyNet
from trioraft.testing.chaos.report import ChaosReport
from trioraft.testing.chaos.run import ChaosOptions, ChaosRun, System, run_chaos

__all__ = [
    "HOST",
    "ChaosOptions",
    "ChaosReport",
    "ChaosRun",
    "Link",
    "NodeProcess",
    "NodeSpec",
    "ProxyNet",
    "System",
    "run_chaos",
]
