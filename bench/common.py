"""Shared pieces: machine description, CPU accounting, databases, hub configs, result files."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
CHANNEL = "shop-bench"
SHOP_DOMAIN = "ordersync-bench.myshopify.com"
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432")
_TICK = os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "missing"


def _tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def source_fingerprint() -> dict[str, str]:
    """Which hub code was measured: a hash of src/ordersync/**/*.py and its newest mtime
    (the tree may change between runs while other work goes on)."""
    src = BENCH_DIR.parent / "src" / "ordersync"
    digest = hashlib.sha256()
    newest = 0.0
    for path in sorted(src.rglob("*.py")):
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes())
        newest = max(newest, path.stat().st_mtime)
    return {
        "sha256_12": digest.hexdigest()[:12],
        "newest_mtime_utc": dt.datetime.fromtimestamp(newest, dt.UTC).isoformat(timespec="seconds"),
    }


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: the machine and the conditions."""
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "mem_total_gb": round(mem_kb / 1024 / 1024, 1),
        "uptime_at_start": uptime(),
        "ordersync_source": source_fingerprint(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": pg_server_version(),
        "wrk": _tool_version(["wrk", "--version"]),
        "packages": {
            name: _version(name)
            for name in (
                "ordersync",
                "fastapi",
                "uvicorn",
                "uvloop",
                "httptools",
                "sqlalchemy",
                "aiosqlite",
                "asyncpg",
                "aiohttp",
            )
        },
    }


def describe_machine(info: dict[str, Any]) -> str:
    return (
        f"{info['date_utc']}  Python {info['python']}  {info['cpu_count']} CPU"
        f" ({info['cpu_model']})  kernel {info['kernel']}  SQLite {info['sqlite']}"
        f"  {info['postgresql']}  ordersync src {info['ordersync_source']['sha256_12']}"
        f"\n{info['uptime_at_start']}"
    )


# ---- CPU accounting ------------------------------------------------------------------------


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    idle = fields[3] + fields[4]
    return total - idle, total


def proc_jiffies(pid: int, *, children: bool = False) -> int:
    """utime + stime of a process (plus its reaped children's with `children`); 0 if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = raw.rsplit(")", 1)[1].split()
    # After the ")" the fields start at field 3 (state): utime is field 14, stime 15.
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used


def _postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@dataclass
class CpuMeter:
    """CPU seconds used during a window: by the whole machine, by named processes of ours,
    by PostgreSQL, and by everything else (other work sharing the machine)."""

    pids: dict[str, int]
    postgres: bool = False
    _start: dict[str, int] = field(default_factory=dict)
    _pg_start: dict[int, int] = field(default_factory=dict)
    _machine: tuple[int, int] = (0, 0)
    _wall: float = 0.0

    def start(self) -> None:
        self._wall = time.monotonic()
        self._machine = _machine_jiffies()
        self._start = {
            name: proc_jiffies(pid, children=name == "self") for name, pid in self.pids.items()
        }
        if self.postgres:
            self._pg_start = {pid: proc_jiffies(pid) for pid in _postgres_pids()}

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self._wall
        busy1, total1 = _machine_jiffies()
        ours = {
            name: (proc_jiffies(pid, children=name == "self") - self._start[name]) / _TICK
            for name, pid in self.pids.items()
        }
        pg = 0.0
        if self.postgres:
            pg = (
                sum(proc_jiffies(pid) - self._pg_start.get(pid, 0) for pid in _postgres_pids())
                / _TICK
            )
        busy = (busy1 - self._machine[0]) / _TICK
        capacity = (total1 - self._machine[1]) / _TICK
        other = max(0.0, busy - sum(ours.values()) - pg)
        return {
            "wall_s": round(wall, 2),
            "machine_busy_pct": round(100 * busy / capacity, 1) if capacity else 0.0,
            "cpu_s": {k: round(v, 2) for k, v in ours.items()},
            "postgres_cpu_s": round(pg, 2),
            # Everything the benchmark did not start: other work on this shared machine.
            "other_cpu_pct": round(100 * other / capacity, 1) if capacity else 0.0,
        }


def background_busy(seconds: float = 2.0) -> float:
    """Percent of the machine's CPU busy while the benchmark itself is idle."""
    b0, t0 = _machine_jiffies()
    time.sleep(seconds)
    b1, t1 = _machine_jiffies()
    return round(100 * (b1 - b0) / (t1 - t0), 1) if t1 > t0 else 0.0


def wait_for_quiet(limit_pct: float = 15.0, max_wait: float = 60.0) -> float:
    """Wait (up to max_wait) for other work on the machine to settle; return the busy %."""
    deadline = time.monotonic() + max_wait
    busy = background_busy()
    while busy > limit_pct and time.monotonic() < deadline:
        print(f"  machine is {busy}% busy before the run; waiting for it to settle", flush=True)
        time.sleep(3)
        busy = background_busy()
    return busy


def vm_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS of a process in KiB (empty if it is gone)."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "VmPeak"):
            out[key] = int(value.split()[0])
    return out


# ---- databases -----------------------------------------------------------------------------


def psql(sql: str, database: str = "postgres") -> str:
    out = subprocess.run(
        ["psql", f"{PG_ADMIN_URL}/{database}", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return out.stdout


def pg_server_version() -> str:
    try:
        return "PostgreSQL " + psql("SHOW server_version").strip()
    except (OSError, subprocess.SubprocessError):
        return "PostgreSQL unavailable"


def create_pg_database(tag: str) -> tuple[str, str]:
    """A fresh database; returns (name, url)."""
    name = f"ordersync_bench_{tag}_{secrets.token_hex(4)}"
    psql(f'CREATE DATABASE "{name}"')
    return name, f"{PG_ADMIN_URL}/{name}"


def drop_pg_database(name: str) -> None:
    psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlite_query(path: Path, sql: str) -> str:
    out = subprocess.run(
        ["sqlite3", "-batch", "-noheader", str(path), sql],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return out.stdout


def db_query(db: str, target: str, sql: str) -> list[str]:
    """Rows (one text column) from the benchmark database: sqlite3 or psql, as a user would."""
    text = sqlite_query(Path(target), sql) if db == "sqlite" else psql(sql, target)
    return [line for line in text.splitlines() if line]


# ---- hub config ----------------------------------------------------------------------------


def write_hub_config(
    workdir: Path,
    database_url: str,
    destinations: Iterable[dict[str, Any]] = (),
) -> Path:
    """An `ordersync serve` config: one Shopify channel (secret from $BENCH_SHOP_SECRET)."""
    config = {
        "database_url": database_url,
        "log_level": "WARNING",
        "channels": [{"id": CHANNEL, "kind": "shopify", "secret": "env:BENCH_SHOP_SECRET"}],
        "destinations": list(destinations),
    }
    path = workdir / "ordersync.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def log_problems(path: Path) -> list[str]:
    """Lines of a server log that look like trouble (errors, tracebacks)."""
    if not path.exists():
        return []
    bad = ("ERROR", "CRITICAL", "Traceback", "Exception")
    return [
        line
        for line in path.read_text(errors="replace").splitlines()
        if any(b in line for b in bad)
    ]


# ---- output --------------------------------------------------------------------------------


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (it reads fine on a terminal too); returns the text it printed."""
    cells = [[str(c) for c in columns], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    out = [f"\n{title}\n", line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    text = "\n".join(out)
    print(text, flush=True)
    return text
