"""Fixtures of the fault-injection suite: the real services it needs, their repair after
each scenario, a store as patient as Shopify, and the scenario results
(bench/results/faults.json plus a summary table; under xdist only the file, since the
scenarios then run in worker processes).

Without a reachable PostgreSQL or RabbitMQ the suite is skipped on a laptop (after trying
../shared/services.sh start), but FAILS under CI=true, like the PostgreSQL tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_scenarios import STORE_TRIES

from ordersync.simulators import shopify_store
from ordersync.testing import services

ROOT = Path(__file__).resolve().parents[2]
SERVICES_SH = ROOT.parent / "shared" / "services.sh"
RESULTS_FILE = ROOT / "bench" / "results" / "faults.json"
RESULTS = pytest.StashKey[list[dict[str, Any]]]()

Record = Callable[[dict[str, Any]], None]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "faults: fault injection against real PostgreSQL/RabbitMQ and hub processes"
        " (runs, never skips, under CI=true)",
    )
    config.stash[RESULTS] = []


async def _unavailable() -> list[str]:
    missing = []
    if not await services.postgres_ready():
        missing.append(f"PostgreSQL ({services.POSTGRES_ADMIN_URL.rsplit('@', 1)[-1]})")
    if not await services.rabbitmq_ready():
        missing.append("RabbitMQ (" + services.BROKER_URL.rsplit("@", 1)[-1] + ")")
    return missing


@pytest.fixture(autouse=True)
async def real_services() -> AsyncIterator[None]:
    """PostgreSQL and RabbitMQ up before each scenario, and up again after it, whatever
    the scenario did to them and however it ended."""
    missing = await _unavailable()
    if missing and SERVICES_SH.exists():
        await services.run_command("bash", str(SERVICES_SH), "start", timeout=120)
        missing = await _unavailable()
    if missing:
        reason = "unreachable: " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: the fault suite must run, never skip)")
        pytest.skip(reason)
    yield
    # A scenario that failed mid-restart must not take the services down for other tests.
    await services.ensure_postgres()
    await services.ensure_rabbitmq()


@pytest.fixture(autouse=True)
def patient_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store keeps retrying through a whole outage, as Shopify would."""
    monkeypatch.setattr(shopify_store, "MAX_TRIES", STORE_TRIES)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Two xdist workers may record scenarios at once: one read-modify-write at a time."""
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def record_result(request: pytest.FixtureRequest) -> Record:
    """`record_result(row)`: keep a scenario's numbers for the summary and merge them into
    bench/results/faults.json under row["scenario"]."""

    def record(row: dict[str, Any]) -> None:
        request.config.stash[RESULTS].append(row)
        RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
        with _locked(RESULTS_FILE.with_suffix(".json.lock")):
            try:
                existing = json.loads(RESULTS_FILE.read_text())
            except (OSError, ValueError):
                existing = {}
            if not isinstance(existing, dict):
                existing = {}
            existing[row["scenario"]] = row
            tmp = RESULTS_FILE.with_suffix(f".json.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
            tmp.replace(RESULTS_FILE)

    return record


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(RESULTS, [])
    if not rows:
        return
    tr = terminalreporter
    tr.section("fault injection: recovery (reported, never asserted)")
    head = (
        f"{'scenario':<58} {'orders':>6} {'run s':>7} {'fault s':>7} {'recov s':>7}"
        f" {'drain s':>7} {'lost':>4} {'dup':>4} {'ooo':>4}"
    )
    tr.write_line(head)
    tr.write_line("-" * len(head))
    for r in rows:
        tr.write_line(
            f"{r['scenario'][:58]:<58} {r['orders']:>6} {r['elapsed_s']:>7.1f}"
            f" {r['fault_s']:>7.1f} {r['recovery_s']:>7.1f} {r['drain_after_ingest_s']:>7.1f}"
            f" {r['lost']:>4} {r['duplicated']:>4} {r['out_of_order']:>4}"
        )
    total = sum(r["elapsed_s"] for r in rows)
    tr.write_line(
        f"run s: ingest start to backlog drained; fault s: fault injected to lifted;"
        f" recov s: fault lifted to backlog drained; drain s: last webhook accepted to"
        f" backlog drained. Sum of runs {total:.0f} s. Written to"
        f" {RESULTS_FILE.relative_to(ROOT)}"
    )
