"""etcd: three ``etcd`` processes, puts through the v3 JSON gateway over HTTP/1.1."""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import subprocess
from contextlib import AsyncExitStack
from typing import Any

import trio

from bench.cluster.common import KEYS, Result, closed_loop, free_ports, make_result, stop_processes


class EtcdCluster:
    def __init__(self, root: str, binary: str) -> None:
        self.root = os.path.join(root, "etcd")
        self.binary = binary
        ports = free_ports(6)
        self.client_ports = ports[:3]
        self.peer_ports = ports[3:]
        self.procs: list[subprocess.Popen[Any]] = []
        self.leader_port: int | None = None

    def start(self) -> None:
        initial = ",".join(f"m{i + 1}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports))
        for i in range(3):
            data = os.path.join(self.root, f"m{i + 1}")
            os.makedirs(data, exist_ok=True)
            cp, pp = self.client_ports[i], self.peer_ports[i]
            cmd = [
                self.binary,
                f"--name=m{i + 1}",
                f"--data-dir={data}",
                f"--listen-client-urls=http://127.0.0.1:{cp}",
                f"--advertise-client-urls=http://127.0.0.1:{cp}",
                f"--listen-peer-urls=http://127.0.0.1:{pp}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{pp}",
                f"--initial-cluster={initial}",
                "--initial-cluster-state=new",
                "--initial-cluster-token=bench",
                "--log-level=error",
                "--logger=zap",
            ]
            log = open(os.path.join(self.root, f"m{i + 1}.log"), "wb")  # noqa: SIM115
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        self.leader_port = trio.run(self._find_leader)

    async def _find_leader(self) -> int:
        with trio.fail_after(60):
            while True:
                for port in self.client_ports:
                    with contextlib.suppress(Exception):
                        async with HttpConnection("127.0.0.1", port) as http:
                            st = await http.post_json("/v3/maintenance/status", {})
                            if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                                await http.post_json("/v3/kv/put", _etcd_put("warm"))
                                return port
                for p in self.procs:
                    if p.poll() is not None:
                        raise RuntimeError(f"an etcd member exited; see {self.root}")
                await trio.sleep(0.2)

    def measure(self, clients: int, args: argparse.Namespace) -> Result:
        assert self.leader_port is not None
        trio.run(etcd_load, self.leader_port, clients, args.warmup, args.requests)
        lat, elapsed, errors = trio.run(
            etcd_load, self.leader_port, clients, args.seconds, args.requests
        )
        return make_result("etcd", "remote", "put", clients, lat, elapsed, errors)

    def stop(self) -> None:
        stop_processes(self.procs)
        self.procs = []


def _etcd_put(key: str, value: bytes = b"") -> dict[str, str]:
    return {
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(value).decode(),
    }


class HttpConnection:
    """A minimal keep-alive HTTP/1.1 client (POST JSON, one request at a time)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.stream: trio.SocketStream | None = None
        self.buf = bytearray()

    async def __aenter__(self) -> HttpConnection:
        self.stream = await trio.open_tcp_stream(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.stream is not None:
            await self.stream.aclose()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        assert self.stream is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        await self.stream.send_all(head + body)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        header = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        status = int(header[0].split()[1])
        fields = {}
        for line in header[1:]:
            k, _, v = line.partition(":")
            fields[k.strip().lower()] = v.strip()
        if "content-length" in fields:
            n = int(fields["content-length"])
            while len(self.buf) < n:
                await self._fill()
            data = bytes(self.buf[:n])
            del self.buf[:n]
            return status, data
        if fields.get("transfer-encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                while (eol := self.buf.find(b"\r\n")) < 0:
                    await self._fill()
                size = int(bytes(self.buf[:eol]).split(b";")[0], 16)
                del self.buf[: eol + 2]
                while len(self.buf) < size + 2:
                    await self._fill()
                out += self.buf[:size]
                del self.buf[: size + 2]
                if size == 0:
                    return status, bytes(out)
        raise RuntimeError("response without a length")

    async def _fill(self) -> None:
        assert self.stream is not None
        data = await self.stream.receive_some(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buf += data

    async def post_json(self, path: str, obj: object) -> Any:
        status, data = await self.post(path, json.dumps(obj).encode())
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {data[:200]!r}")
        return json.loads(data)


async def etcd_load(
    port: int, clients: int, seconds: float, max_requests: int
) -> tuple[list[float], float, int]:
    value = b"x" * 100
    bodies = [json.dumps(_etcd_put(f"k{j}", value)).encode() for j in range(KEYS)]
    async with AsyncExitStack() as stack:
        conns = [
            await stack.enter_async_context(HttpConnection("127.0.0.1", port))
            for _ in range(clients)
        ]

        async def put(w: int, i: int) -> bool:
            status, _ = await conns[w].post("/v3/kv/put", bodies[i % KEYS])
            return status == 200

        return await closed_loop(clients, seconds, max_requests, put)
