"""The document database cluster, end to end: run it with ``python3 examples/cluster.py``.

Starts a 3-node cluster (``docstore cluster``, one process per node) in a
temporary directory, writes through the client, watches changes, kills the
leader with SIGKILL, keeps writing through the election, then stops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import tomllib

import trio

import docstore


async def demo(addresses: list[str], token: str, directory: str) -> None:
    async with docstore.connect(addresses, token=token, call_timeout=15) as db:
        users = db.collection("users")
        await users.create_index("age")
        async with users.watch() as changes:
            await users.put("ann", {"name": "Ann", "age": 31})
            await users.put("bob", {"name": "Bob", "age": 17})
            for _ in range(2):
                ch = await changes.__anext__()
                print(f"watch: {ch['op']} {ch['key']} at rev {ch['rev']}")
            adults = await users.find({"age": {"$gte": 18}})
            print("adults:", [d["name"] for d in adults])

            leader = (await db.members())["leader_id"]
            pid = await trio.Path(directory, f"node{leader}.pid").read_text()
            os.kill(int(pid), signal.SIGKILL)
            print(f"killed the leader, node {leader}; writing on")
            rev = await users.patch("ann", {"$inc": {"age": 1}})
            ch = await changes.__anext__()  # the watch resumed on the new leader
            print(f"watch after failover: {ch['op']} {ch['key']} at rev {ch['rev']} (wrote {rev})")
        for s in await db.status():
            print(f"  node {s.get('node_id')}: {s['role']}")


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        directory = os.path.join(root, "data")
        cluster = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "docstore",
                "cluster",
                "--dir",
                directory,
                "--base-port",
                "7201",
                "--election-timeout-min",
                "0.3",
                "--election-timeout-max",
                "0.6",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert cluster.stdout is not None
            for line in cluster.stdout:
                if line.startswith("docstore:"):
                    sys.exit(line)
                if "Ctrl-C" in line:
                    break
            with open(os.path.join(directory, "cluster.toml"), "rb") as f:
                info = tomllib.load(f)
            addresses = [a for _, a in sorted(info["nodes"].items())]
            trio.run(demo, addresses, info["token"], directory)
        finally:
            cluster.send_signal(signal.SIGTERM)
            cluster.wait(timeout=15)


if __name__ == "__main__":
    main()
