"""Stop, start and restart this machine's PostgreSQL and RabbitMQ, for fault-injection tests.

The fault suite restarts the real services mid-run to check that the hub rides through it.
Other tests share those services, so every helper here that takes one down has a partner
that brings it back and waits until it answers real requests (a query, an AMQP handshake),
and `ensure_postgres()` / `ensure_rabbitmq()` repair whatever a failed test left behind.

Assumes the Debian tooling of this machine kind, run as root: `pg_ctlcluster` for the
first cluster under /etc/postgresql, and `rabbitmqctl` / `rabbitmq-server`. Everything is
async so that a restart never stalls the event loop that runs the store simulator and the
sinks of the scenario in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable

import aio_pika
import asyncpg
from sqlalchemy.engine import make_url

from ordersync.testing.cluster import BROKER_URL, POSTGRES_ADMIN_URL

log = logging.getLogger(__name__)

POSTGRES_CONF_DIR = "/etc/postgresql"


class ServiceError(RuntimeError):
    """A service could not be stopped, started or reached in time."""


async def run_command(*cmd: str, timeout: float = 120.0) -> tuple[int, str]:
    """Run a command without blocking the loop; its exit code and combined output."""
    if shutil.which(cmd[0]) is None:
        raise ServiceError(f"{cmd[0]} is not installed on this machine")
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise ServiceError(f"{' '.join(cmd)} did not finish within {timeout:g}s") from None
    return int(proc.returncode or 0), out.decode(errors="replace").strip()


# ---- PostgreSQL ------------------------------------------------------------------------


def postgres_version() -> str:
    """The cluster version `pg_ctlcluster` manages (the first under /etc/postgresql)."""
    try:
        versions = sorted(os.listdir(POSTGRES_CONF_DIR))
    except OSError as e:
        raise ServiceError(f"no PostgreSQL clusters configured: {e}") from e
    if not versions:
        raise ServiceError(f"no PostgreSQL clusters under {POSTGRES_CONF_DIR}")
    return versions[0]


async def postgres_ready(url: str = POSTGRES_ADMIN_URL, timeout: float = 3.0) -> bool:
    """True once PostgreSQL answers a query (not merely accepts TCP: it does that while it
    is still starting up or shutting down)."""
    try:
        conn = await asyncpg.connect(url, timeout=timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        await conn.fetchval("SELECT 1", timeout=timeout)
        return True
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), timeout)


async def pg_ctlcluster(action: str, timeout: float = 120.0) -> tuple[int, str]:
    """`pg_ctlcluster --skip-systemctl-redirect <version> main <action>`."""
    return await run_command(
        "pg_ctlcluster",
        "--skip-systemctl-redirect",
        postgres_version(),
        "main",
        action,
        timeout=timeout,
    )


async def stop_postgres() -> None:
    """Fast shutdown: open transactions roll back, every client is disconnected."""
    code, out = await pg_ctlcluster("stop")
    if code not in (0, 2):  # 2: it was not running
        raise ServiceError(f"pg_ctlcluster stop exited {code}: {out}")


async def start_postgres(timeout: float = 60.0) -> float:
    """Start PostgreSQL (if it is not running) and wait until it answers; the seconds."""
    started = time.monotonic()
    if not await postgres_ready():
        code, out = await pg_ctlcluster("start")
        # 2: already running (maybe still starting up); the wait below decides.
        if code not in (0, 2):
            log.warning("pg_ctlcluster start exited %s: %s", code, out)
    await wait_until_ready(postgres_ready, "PostgreSQL", timeout - (time.monotonic() - started))
    return time.monotonic() - started


async def restart_postgres(down_for: float = 0.0, timeout: float = 60.0) -> float:
    """Stop PostgreSQL, keep it down `down_for` seconds, start it and wait until it answers.
    Always tries to bring it back, even if stopping failed. Returns the seconds it took."""
    started = time.monotonic()
    try:
        await stop_postgres()
        if down_for > 0:
            await asyncio.sleep(down_for)
    finally:
        await start_postgres(timeout)
    return time.monotonic() - started


async def ensure_postgres(timeout: float = 60.0) -> bool:
    """Make sure PostgreSQL is up; True if it had to be started."""
    if await postgres_ready():
        return False
    await start_postgres(timeout)
    return True


# ---- RabbitMQ --------------------------------------------------------------------------


async def rabbitmq_ready(url: str = BROKER_URL, timeout: float = 3.0) -> bool:
    """True once RabbitMQ completes an AMQP handshake (its app is running)."""
    u = make_url(url)
    try:  # a closed port first, without aio_pika logging a failed connection attempt
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(u.host or "127.0.0.1", u.port or 5672), timeout
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    try:
        conn = await aio_pika.connect(url, timeout=timeout)
    except Exception:  # aiormq raises a variety of its own errors besides OSError
        return False
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), timeout)
    return True


async def stop_rabbitmq(timeout: float = 120.0) -> None:
    """Stop the RabbitMQ application (the Erlang node keeps running): every client is
    disconnected and the AMQP port closes; quorum queues keep their messages on disk."""
    code, out = await run_command("rabbitmqctl", "stop_app", timeout=timeout)
    if code != 0:
        raise ServiceError(f"rabbitmqctl stop_app exited {code}: {out}")


async def start_rabbitmq(timeout: float = 120.0) -> float:
    """Start the RabbitMQ application, or the whole node if it is down, and wait until it
    completes an AMQP handshake; the seconds it took."""
    started = time.monotonic()
    if not await rabbitmq_ready():
        code, out = await run_command("rabbitmqctl", "start_app", timeout=timeout)
        if code != 0:
            log.warning("rabbitmqctl start_app exited %s (%s); starting the node", code, out)
            code, out = await run_command("rabbitmq-server", "-detached", timeout=timeout)
            if code != 0:
                raise ServiceError(f"rabbitmq-server -detached exited {code}: {out}")
    await wait_until_ready(rabbitmq_ready, "RabbitMQ", timeout - (time.monotonic() - started))
    return time.monotonic() - started


async def restart_rabbitmq(down_for: float = 0.0, timeout: float = 120.0) -> float:
    """stop_app, keep it down `down_for` seconds, start_app, wait until it answers. Always
    tries to bring it back, even if stopping failed. Returns the seconds it took."""
    started = time.monotonic()
    try:
        await stop_rabbitmq(timeout)
        if down_for > 0:
            await asyncio.sleep(down_for)
    finally:
        await start_rabbitmq(timeout)
    return time.monotonic() - started


async def ensure_rabbitmq(timeout: float = 120.0) -> bool:
    """Make sure RabbitMQ is up; True if it had to be started."""
    if await rabbitmq_ready():
        return False
    await start_rabbitmq(timeout)
    return True


# ---- shared ----------------------------------------------------------------------------


async def wait_until_ready(
    ready: Callable[[], Awaitable[bool]], what: str, timeout: float, every: float = 0.2
) -> None:
    deadline = time.monotonic() + max(timeout, 0.0)
    while not await ready():
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} is not answering after {timeout:.0f}s")
        await asyncio.sleep(every)
