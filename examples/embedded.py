"""An embedded docstore in a Trio program.

Run: ``python examples/embedded.py [DIR]`` (a temporary directory by default).
"""

from __future__ import annotations

import sys
import tempfile

import trio

import docstore
from docstore import commands as C


async def main(path: str) -> None:
    async with docstore.open(path) as db:
        todos = db.collection("todos")
        await todos.create_index("done")

        async def show_changes(
            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
        ) -> None:
            async with todos.watch({"done": True}) as changes:
                task_status.started()
                async for ch in changes:
                    print("watch:", ch["op"], ch["key"], "at rev", ch["rev"])

        async with trio.open_nursery() as nursery:
            await nursery.start(show_changes)
            rev = await todos.put("milk", {"title": "buy milk", "done": False})
            await todos.patch("milk", {"$set": {"done": True}}, if_rev=rev)
            try:
                await todos.patch("milk", {"$set": {"done": False}}, if_rev=rev)
            except docstore.ConflictError as exc:
                print("conflict, current revision is", exc.rev)
            await db.batch(
                [
                    C.insert("todos", {"title": "walk", "done": True}),
                    C.put("todos", "tmp", {"title": "soon gone"}),
                ]
            )
            await todos.put("note", {"title": "expires"}, ttl=0.1)
            print("done:", [d["title"] for d in await todos.find({"done": True}, sort="title")])
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        print("digest", (await db.digest())[:16], "at rev", db.rev)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        trio.run(main, sys.argv[1] if len(sys.argv) > 1 else scratch)
