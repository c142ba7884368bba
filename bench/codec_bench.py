"""Codec hot-path figures: encode/decode of typical frames (prints a table).

python bench/codec_bench.py
"""

from __future__ import annotations

import timeit
from functools import partial

from trioraft.core.types import AppendEntries, AppendEntriesResponse, Entry, Heartbeat
from trioraft.transport.codec import decode_frame, encode_frame
from trioraft.transport.messages import AnyMessage, ClientRequest, ClientResponse


def cases() -> dict[str, list[AnyMessage]]:
    def ae(n: int, size: int) -> AppendEntries:
        entries = tuple(
            Entry(
                101 + i,
                5,
                data=b"x" * size,
                client_id="client-1",
                sequence=i,
                timestamp_ms=1_700_000_000_000,
            )
            for i in range(n)
        )
        return AppendEntries(5, 1, 2, 100, 5, entries, 150)

    return {
        "AppendEntries 64 x 100 B": [ae(64, 100)],
        "AppendEntries 1 x 100 B": [ae(1, 100)],
        "AppendEntries 512 x 100 B": [ae(512, 100)],
        "16 AppendEntriesResponse": [
            AppendEntriesResponse(5, 2, 1, True, 100 + i) for i in range(16)
        ],
        "Heartbeat": [Heartbeat(5, 1, 2, 150, 7)],
        "16 ClientRequest (150 B)": [
            ClientRequest(i, "propose", {"op": "put", "key": f"k{i}", "value": b"v" * 120})
            for i in range(16)
        ],
        "16 ClientResponse": [ClientResponse(i, True, {"rev": i}) for i in range(16)],
    }


def main() -> None:
    print(f"{'frame':<28}{'bytes':>8}{'encode us':>11}{'decode us':>11}{'total us':>10}")
    for name, msgs in cases().items():
        data = encode_frame(msgs)
        assert decode_frame(data) == msgs
        n = 2000 if len(data) < 20_000 else 200
        enc = min(timeit.repeat(partial(encode_frame, msgs), number=n, repeat=5)) / n * 1e6
        dec = min(timeit.repeat(partial(decode_frame, data), number=n, repeat=5)) / n * 1e6
        print(f"{name:<28}{len(data):>8}{enc:>11.1f}{dec:>11.1f}{enc + dec:>10.1f}")


if __name__ == "__main__":
    main()
