"""`ordersync.testing.cli.run_cli` answers like the real `python -m ordersync` process, so
tests of the command's verbs can skip the child process's start-up."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest
import yaml

from ordersync.testing.cli import invoke_cli, run_cli

pytestmark = pytest.mark.e2e


async def child(config: Path, *args: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ordersync", *args, "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out + err


def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


async def test_migrate_in_process_builds_the_same_schema_as_the_command(tmp_path: Path) -> None:
    """`migrate` run both ways: exit 0 and the same tables in the two SQLite files."""
    configs = []
    for name in ("child", "inproc"):
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"database_url": f"sqlite:///{tmp_path}/{name}.db"}))
        configs.append(config)

    rc_child, out_child = await child(configs[0], "migrate")
    rc_inproc, out_inproc = await run_cli("migrate", "--config", str(configs[1]))

    assert (rc_child, rc_inproc) == (0, 0), (out_child, out_inproc)
    assert "orders" in tables(tmp_path / "child.db")
    assert tables(tmp_path / "inproc.db") == tables(tmp_path / "child.db")


async def test_a_bad_config_gets_the_same_exit_code_and_names_the_same_key(tmp_path: Path) -> None:
    """A whsec_-less destination secret: exit 2 and `destinations[0].secret`, both ways."""
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump({"destinations": [{"id": "erp", "url": "http://x", "secret": "nope"}]})
    )

    rc_child, out_child = await child(config, "migrate")
    rc_inproc, out_inproc = await run_cli("migrate", "--config", str(config))

    assert (rc_child, rc_inproc) == (2, 2)
    assert b"destinations[0].secret" in out_child
    assert b"destinations[0].secret" in out_inproc


def test_commands_that_need_a_process_of_their_own_are_refused() -> None:
    """`serve` installs signal handlers and never returns: not something to run in-process."""
    with pytest.raises(ValueError, match="serve"):
        invoke_cli(["serve"])
