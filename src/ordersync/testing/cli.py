"""Run the `ordersync` command in this process, for tests of its verbs.

A `python -m ordersync ...` child process spends a second or more (several on a loaded
2-core machine) importing the hub before it does anything; a test that runs four commands
waits for four of those. `run_cli` invokes the same Typer app in this process instead, on
a thread of its own (the commands call `asyncio.run`, which needs a thread without a
running loop), and answers like the child process would: the exit code and the output.

Keep one real child process per command where the process itself is under test (its exit
code after a signal, its start-up, what it prints before the hub is imported); use this
for the rest. Commands that serve or install signal handlers (`serve`, `worker`, `demo`)
need the main thread of a process of their own: run those as child processes.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Sequence

from typer.testing import CliRunner

# CliRunner swaps sys.stdin/stdout/stderr for the duration of a call: one call at a time.
_one_at_a_time = threading.Lock()
_NEEDS_A_PROCESS = frozenset({"serve", "worker", "demo"})


def invoke_cli(args: Sequence[str], *, input: str | None = None) -> tuple[int, bytes]:
    """`ordersync *args` in this thread: (exit code, stdout followed by stderr)."""
    code, out, err = invoke_cli_streams(args, input=input)
    return code, out + err


def invoke_cli_streams(
    args: Sequence[str], *, input: str | None = None
) -> tuple[int, bytes, bytes]:
    """`ordersync *args` in this thread: (exit code, stdout, stderr), the streams apart."""
    if _NEEDS_A_PROCESS.intersection(args[:1]):
        raise ValueError(f"`ordersync {args[0]}` needs a process of its own")
    from ordersync.cli import app  # imported on use: nothing at import time

    with _one_at_a_time:
        result = CliRunner().invoke(app, list(args), input=input, catch_exceptions=True)
    code = result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash, not an exit: the test should see its traceback
    return code, result.stdout_bytes, result.stderr_bytes


async def run_cli(*args: str, input: str | None = None) -> tuple[int, bytes]:
    """`ordersync *args` in this process, off the event loop: (exit code, output)."""
    return await asyncio.to_thread(invoke_cli, args, input=input)


async def run_cli_streams(*args: str, input: str | None = None) -> tuple[int, bytes, bytes]:
    """`ordersync *args` in this process, off the event loop: (exit code, stdout, stderr)."""
    return await asyncio.to_thread(invoke_cli_streams, args, input=input)


async def run_process(*args: str, input: str | None = None) -> tuple[int, bytes, bytes]:
    """`python -m ordersync *args` as a real child process: (exit code, stdout, stderr).

    For the one run per command that proves the real entry point; `run_cli` for the rest."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ordersync", *args,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate(None if input is None else input.encode())
    assert proc.returncode is not None
    return proc.returncode, out, err
