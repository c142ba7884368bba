"""How much memory a client that asks for backups and never reads costs a node.

Run: ``python bench/backup_memory.py [--mb 4.5] [--backups 60] [--hold 15]``

Starts one ``docstore serve`` process (a single-node cluster), writes about
``--mb`` megabytes of documents, then opens a raw WebSocket client
connection, sends ``--backups`` backup requests in one frame and never
reads.  It samples the node's resident set size (``VmRSS`` in
``/proc/PID/status``) while the connection is held for ``--hold`` seconds,
closes the connection and samples again.  Prints the growth over the RSS
measured just before the requests.  Numbers, not a test: memory figures
vary with the allocator and belong in reports.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import trio

import docstore
from trioraft.transport._ws import dial, dialer_handshake
from trioraft.transport.codec import DEFAULT_MAX_FRAME, encode_frame, new_nonce
from trioraft.transport.messages import ClientHello, ClientRequest

SECRET = "bench-secret"
TOKEN = "bench-token"
CLUSTER = "docstore"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def load(address: str, megabytes: float) -> None:
    async with docstore.connect([address], token=TOKEN, call_timeout=60) as db:
        coll = db.collection("bench")
        n = int(megabytes * 1024 * 1024 / 1500)

        async def writer(w: int) -> None:
            for i in range(w, n, 32):
                await coll.put(f"k{i:08}", {"i": i, "pad": "x" * 1400})

        async with trio.open_nursery() as nursery:
            for w in range(32):
                nursery.start_soon(writer, w)


async def flood(address: str, pid: int, backups: int, hold: float) -> tuple[float, float]:
    """Send the backups without reading; returns (peak RSS while held, RSS after close)."""
    peak = 0.0
    async with dial(address, max_frame=DEFAULT_MAX_FRAME, connect_timeout=5) as sock:
        hello = ClientHello("docstore", CLUSTER, new_nonce())
        reply = await dialer_handshake(sock, hello, TOKEN.encode(), expect_node=None)
        del reply
        requests = [ClientRequest(i + 1, "backup", None) for i in range(backups)]
        await sock.send(encode_frame(requests))
        deadline = trio.current_time() + hold
        while trio.current_time() < deadline:
            peak = max(peak, rss_mb(pid))
            await trio.sleep(0.1)
    await trio.sleep(3)  # let the node notice the close and drop what it held
    return peak, rss_mb(pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=4.5, help="megabytes of documents")
    ap.add_argument("--backups", type=int, default=60)
    ap.add_argument("--hold", type=float, default=15.0, help="seconds the connection stays open")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="backup-memory-")
    address = f"127.0.0.1:{free_port()}"
    out = open(os.path.join(root, "node.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "docstore",
            "serve",
            "--id",
            "1",
            "--listen",
            address,
            "--data",
            os.path.join(root, "data"),
            "--secret",
            SECRET,
            "--token",
            TOKEN,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        trio.run(load, address, args.mb)
        time.sleep(1)
        before = rss_mb(proc.pid)
        peak, after = trio.run(flood, address, proc.pid, args.backups, args.hold)
        size = sum(
            os.path.getsize(os.path.join(dp, f))
            for dp, _, fs in os.walk(os.path.join(root, "data", "docstore"))
            for f in fs
        )
        leftovers = [f for f in os.listdir(os.path.join(root, "data")) if f.endswith(".tmp")]
        print(f"data on disk (docstore/): {size / 1e6:.1f} MB, {args.backups} backups not read")
        print("| RSS before | peak while held | after close | growth peak | growth held after |")
        print("|---|---|---|---|---|")
        print(
            f"| {before:.0f} MB | {peak:.0f} MB | {after:.0f} MB"
            f" | +{peak - before:.0f} MB | +{after - before:.0f} MB |"
        )
        print(f"backup temp files left: {len(leftovers)}")
    finally:
        proc.terminate()
        proc.wait(10)
        out.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
