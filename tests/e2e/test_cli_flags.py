"""The ``docstore`` command's flags (issue 13, item 5) and the generated configuration reference."""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

import pytest

from docstore import cli
from tests.e2e import test_cluster_cli
from tests.e2e.test_cluster_cli import ClusterProcess, cluster_dir, run_cli

start_cluster = test_cluster_cli.start_cluster  # the fixture

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _commands() -> dict[str, argparse.ArgumentParser]:
    return cli.subcommands(cli.build_parser())


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_flag_of_every_subcommand_has_help(name: str) -> None:
    parser = _commands()[name]
    text = parser.format_help()  # what `docstore NAME --help` prints
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
        for flag in action.option_strings:
            assert flag in text, (name, flag)
        # argparse wraps help at word boundaries: compare the words.
        first = action.help.split()[0] if "%" not in action.help else ""
        assert first in text, (name, action.dest)


def test_help_of_a_subcommand_runs_as_a_command() -> None:
    r = run_cli("serve", "--help")
    assert r.returncode == 0 and "--proposal-timeout" in r.stdout
    assert "seconds a write waits" in r.stdout
    r = run_cli("get", "--help")
    assert r.returncode == 0 and "--client NAME" in r.stdout


def test_serve_takes_proposal_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    import docstore.server

    seen: dict[str, Any] = {}

    def fake_load_config(path: str | None = None, **overrides: Any) -> Any:
        seen.update(overrides)
        raise ValueError("stop here")

    monkeypatch.setattr(docstore.server, "load_config", fake_load_config)
    code = cli.main(["serve", "--id", "1", "--proposal-timeout", "2.5", "--secret", "s"])
    assert code == cli.EXIT_USAGE and seen["proposal_timeout"] == 2.5
    assert run_cli("serve", "--proposal-timeout", "soon").returncode == 2


def test_operations_md_holds_the_generated_configuration_reference() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    start = doc.index(cli.REFERENCE_START) + len(cli.REFERENCE_START) + 1
    end = doc.index(cli.REFERENCE_END)
    assert doc[start:end] == cli.config_reference(), (
        "docs/operations.md is out of date: run `docstore config-reference --update "
        "docs/operations.md`"
    )


def test_config_reference_names_every_setting() -> None:
    import dataclasses

    from docstore.server import ServerConfig

    text = cli.config_reference()
    for f in dataclasses.fields(ServerConfig):
        assert f"| `{f.name}` |" in text
    assert "| `proposal_timeout` | `--proposal-timeout` | - | `30.0` |" in text
    assert "| `secret` | `--secret` | `DOCSTORE_SECRET` | - |" in text


def test_config_reference_update_rewrites_only_its_block(tmp_path: pathlib.Path) -> None:
    doc = tmp_path / "ops.md"
    doc.write_text(f"before\n{cli.REFERENCE_START}\nstale\n{cli.REFERENCE_END}\nafter\n")
    assert cli.main(["config-reference", "--update", str(doc)]) == 0
    text = doc.read_text()
    assert "stale" not in text and text.startswith("before\n") and text.endswith("after\n")
    assert cli.config_reference() in text


def _extra_principals_cluster(tmp_path: pathlib.Path) -> pathlib.Path:
    return cluster_dir(
        tmp_path / "cluster",
        secret="s3cret-s3cret",
        token="admin-token",
        tokens={"reporting": "reporting-token", "app": "app-token"},
        roles={"reporting": "read"},
    )


def test_client_flag_uses_an_extra_principal(
    start_cluster: Any, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _extra_principals_cluster(tmp_path)
    timing = [*test_cluster_cli.TIMING, "--proposal-timeout", "7"]
    monkeypatch.setattr(test_cluster_cli, "TIMING", timing)
    # --base-port (fresh): the cluster gets new addresses and keeps the file's principals.
    c: ClusterProcess = start_cluster("cluster", fresh=True)
    assert c.dir == directory and c.info["tokens"]["reporting"] == "reporting-token"
    assert c.info["roles"] == {"reporting": "read"} and c.info["token"] == "admin-token"
    # docstore cluster hands its tuning flags, --proposal-timeout included, to every node.
    cmdline = pathlib.Path(f"/proc/{c.pid(1)}/cmdline").read_bytes().split(b"\0")
    assert float(cmdline[cmdline.index(b"--proposal-timeout") + 1]) == 7
    d = str(directory)
    r = run_cli("put", "users", "ann", '{"age": 31}', "--dir", d, "--client", "app")
    assert r.returncode == 0, r.stderr  # token tokens.app from cluster.toml; role write
    r = run_cli("get", "users", "ann", "--dir", d, "--client", "reporting")
    assert r.returncode == 0 and '"age": 31' in r.stdout, r.stderr
    r = run_cli("put", "users", "bob", "{}", "--dir", d, "--client", "reporting")
    assert r.returncode == 1 and "forbidden" in r.stderr, r  # role read
    r = run_cli("get", "users", "ann", "--dir", d, "--client", "reporting", "--token", "app-token")
    assert r.returncode == 3 and "token rejected" in r.stderr, r
    r = run_cli("get", "users", "ann", "--dir", d, "--client", "nobody")
    assert r.returncode == 2 and "no client token of client 'nobody'" in r.stderr, r
    # The environment works as the flag does.
    env_r = _run_env(
        ["get", "users", "ann", "--dir", d], DOCSTORE_CLIENT="reporting", DOCSTORE_TOKEN="x"
    )
    assert env_r.returncode == 3 and "token rejected" in env_r.stderr


def _run_env(args: list[str], **env: str) -> Any:
    import os
    import subprocess

    return subprocess.run(
        test_cluster_cli.docstore_cmd(*args),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
