"""A custom collection type and a versioned command handler, embedded.

Run: ``python examples/custom_collection.py [DIR]`` (a temporary directory by default).

``Accounts`` validates documents and computes ``email_lower`` so that a
unique index can enforce case-insensitive e-mail uniqueness.  ``transfer``
(version 1) moves money between two accounts atomically; it reads the
current state through the context and returns plain commands, so every
replica computes the same effects.
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any

import trio

import docstore
from docstore import commands as C


class Accounts(docstore.CollectionType):
    name = "accounts"
    version = 1

    def validate(self, doc: dict[str, Any]) -> None:
        if not isinstance(doc.get("email"), str) or "@" not in doc["email"]:
            raise docstore.ValidationError("an account needs an e-mail address")
        balance = doc.get("balance", 0)
        if not isinstance(balance, int) or balance < 0:
            raise docstore.ValidationError("balance is a non-negative integer (cents)")

    def compute(self, doc: dict[str, Any]) -> dict[str, Any]:
        return {"email_lower": str(doc.get("email", "")).lower()}


def transfer(ctx: docstore.CommandContext, args: Any) -> list[dict[str, Any]]:
    """``{"from": key, "to": key, "amount": cents}`` -> two conditional patches."""
    src, dst, amount = args["from"], args["to"], args["amount"]
    if not isinstance(amount, int) or amount <= 0:
        raise docstore.InvalidCommandError("amount is a positive integer")
    have = ctx.get("accounts", src)
    if have is None or have.get("balance", 0) < amount:
        raise docstore.ConflictError("insufficient funds", rev=have["_rev"] if have else 0)
    return [
        C.patch("accounts", src, {"$inc": {"balance": -amount}}, if_rev=have["_rev"]),
        C.patch("accounts", dst, {"$inc": {"balance": amount}}, if_exists=True),
    ]


def make_registry() -> docstore.Registry:
    reg = docstore.Registry()
    reg.register_type(Accounts())
    reg.register_command("transfer", 1, transfer)
    return reg


async def main(path: str) -> None:
    async with docstore.open(path, registry=make_registry()) as db:
        accounts = await db.create_collection("accounts", type="accounts", if_not_exists=True)
        await accounts.create_index("email_lower", unique=True)
        await accounts.put("ann", {"email": "Ann@example.com", "balance": 500})
        await accounts.put("bob", {"email": "bob@example.com", "balance": 0})
        try:
            await accounts.put("ann2", {"email": "ANN@example.com"})
        except docstore.UniqueViolation as exc:
            print("refused:", exc)
        try:
            await accounts.put("eve", {"email": "nope"})
        except docstore.ValidationError as exc:
            print("refused:", exc)
        await db.call("transfer", 1, {"from": "ann", "to": "bob", "amount": 200})
        try:
            await db.call("transfer", 1, {"from": "bob", "to": "ann", "amount": 999})
        except docstore.ConflictError as exc:
            print("refused:", exc)
        for doc in await accounts.find(sort="_key"):
            print(doc["_key"], doc["balance"], "rev", doc["_rev"])
        found = await accounts.find({"email_lower": "bob@example.com"})
        print("by computed field:", [d["_key"] for d in found])


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        trio.run(main, sys.argv[1] if len(sys.argv) > 1 else scratch)
