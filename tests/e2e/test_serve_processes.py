"""`ordersync serve --processes N`: N API processes on one port (SO_REUSEPORT) under the
same supervisor as `ordersync worker --processes N`; PostgreSQL only."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
import httpx
import pytest
import yaml
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy.engine import make_url

from ordersync.entrypoints.process import free_port
from ordersync.simulators.shopify_store import StoreSimulator
from ordersync.testing.cluster import POSTGRES_ADMIN_URL

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(120)]

CHANNEL = "shop"
DEADLINE_S = 60.0  # generous: a poll gives up only if something is really broken


def write_config(path: Path, database_url: str, shop_secret: str) -> Path:
    cfg = {
        "database_url": database_url,
        "log_level": "WARNING",
        "channels": [{"id": CHANNEL, "kind": "shopify", "secret": shop_secret}],
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    name = f"ordersync_sp_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def serve_cmd(config: Path, port: int, processes: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ordersync",
        "serve",
        "--processes",
        str(processes),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


# ---- /proc: a process's children and who listens on a port --------------------------------
def children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def listening_pids(port: int, pids: set[int]) -> set[int]:
    """Which of `pids` hold a TCP socket in LISTEN state on `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "0A":  # 0A: LISTEN
                inodes.add(f[9])
    listening = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                listening.add(pid)
                break
    return listening


def logs(path: Path) -> str:
    return path.read_text(errors="replace")


async def until(condition: Callable[[], Awaitable[bool]], what: str, log: Path) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} within {DEADLINE_S}s\n{logs(log)}")
        await asyncio.sleep(0.1)


async def two_listening_children(
    sup: subprocess.Popen[bytes], port: int, log: Path, *, without: int | None = None
) -> set[int]:
    """Wait until the supervisor has two children (not `without`), both listening on
    `port`, i.e. ready: uvicorn listens only after the hub has started."""
    kids: set[int] = set()

    async def ready() -> bool:
        nonlocal kids
        assert sup.poll() is None, logs(log)
        kids = children_of(sup.pid)
        return len(kids) == 2 and without not in kids and listening_pids(port, kids) == kids

    await until(ready, "two children listening", log)
    return kids


async def healthz(port: int) -> int:
    """One request over a new connection."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as r,
    ):
        return r.status


def webhooks_by_pid(mp_dir: Path) -> dict[int, float]:
    """Webhooks each process counted, from its own Prometheus multiprocess file."""
    counts = {}
    for f in mp_dir.glob("counter_*.db"):
        pid = int(f.stem.rsplit("_", 1)[1])
        counts[pid] = sum(
            s.value
            for m in MultiProcessCollector.merge([str(f)], accumulate=True)  # type: ignore[no-untyped-call]
            if m.name == "ordersync_webhooks_received"
            for s in m.samples
            if s.name.endswith("_total")
        )
    return counts


async def stop(sup: subprocess.Popen[bytes]) -> int:
    if sup.poll() is None:
        sup.send_signal(signal.SIGTERM)
    try:
        return await asyncio.to_thread(sup.wait, DEADLINE_S)
    except subprocess.TimeoutExpired:
        sup.kill()
        raise


async def test_two_processes_share_the_port_and_store_every_webhook_once(
    pg_url: str, tmp_path: Path
) -> None:
    secret = secrets.token_urlsafe(24)
    config = write_config(tmp_path / "ordersync.yaml", pg_url, secret)
    mp_dir = tmp_path / "prometheus"
    mp_dir.mkdir()
    port, log = free_port(), tmp_path / "serve.log"
    sup = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, polled below
        serve_cmd(config, port, 2),
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)},
    )
    try:
        kids = await two_listening_children(sup, port, log)
        store = StoreSimulator(
            f"http://127.0.0.1:{port}/v1/channels/{CHANNEL}/webhooks", secret, concurrency=16
        )
        report = await store.run(200, lifecycle=False)
        # Whichever child answers /metrics (a new connection each time) shows every child's.
        scraped = []
        for _ in range(4):
            async with httpx.AsyncClient() as client:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            scraped.append(
                sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("ordersync_webhooks_received_total")
                )
            )
    finally:
        code = await stop(sup)

    assert (report.accepted, report.failed) == (200, 0)
    conn = await asyncpg.connect(pg_url, timeout=5)
    try:
        orders = await conn.fetchval("SELECT count(DISTINCT external_id) FROM orders")
        order_rows = await conn.fetchval("SELECT count(*) FROM orders")
        inbox_rows = await conn.fetchval("SELECT count(*) FROM inbox")
    finally:
        await conn.close()
    assert (orders, order_rows, inbox_rows) == (200, 200, 200)
    served = webhooks_by_pid(mp_dir)
    assert sum(served.values()) == 200
    assert {pid for pid, n in served.items() if n > 0} == kids  # both children served
    assert scraped == [200.0] * 4
    assert code == 0, logs(log)
    assert not any(alive(pid) for pid in kids)


async def test_several_processes_refuse_sqlite(tmp_path: Path) -> None:
    config = write_config(tmp_path / "ordersync.yaml", f"sqlite:///{tmp_path / 'hub.db'}", "s")
    done = await asyncio.to_thread(
        subprocess.run,
        serve_cmd(config, free_port(), 2),
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 2
    assert "serve --processes N (N > 1) needs PostgreSQL" in " ".join(done.stderr.split())
    assert not (tmp_path / "hub.db").exists()  # refused before touching the database


async def test_a_killed_child_is_restarted(pg_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ordersync.yaml", pg_url, "s")
    port, log = free_port(), tmp_path / "serve.log"
    sup = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, polled below
        serve_cmd(config, port, 2), stdout=subprocess.DEVNULL, stderr=log.open("wb")
    )
    try:
        first = await two_listening_children(sup, port, log)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        now = await two_listening_children(sup, port, log, without=victim)
        assert len(now - first) == 1  # the survivor kept running, one new child
        statuses = [await healthz(port) for _ in range(4)]
    finally:
        code = await stop(sup)
    assert statuses == [200] * 4
    assert code == 0, logs(log)
    assert not any(alive(pid) for pid in now)
