"""`ordersync worker`: delivery workers without the API, any number, on any machine.

One worker process runs the outbox relay (only the lease holder publishes), the broker
consumer and the database sweeper. `--processes N` starts N such processes under a small
supervisor that restarts a crashed one, forwards SIGTERM (each child drains: in-flight
sends finish and are recorded, messages are acknowledged) and serves their metrics in
Prometheus multiprocess mode on one port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ordersync.config import Settings

log = logging.getLogger(__name__)


async def run_worker(settings: Settings, *, metrics_port: int | None = None) -> None:
    """One worker process until SIGTERM/SIGINT, then a graceful drain."""
    from ordersync.bootstrap import Role, build_hub

    hub = build_hub(settings, Role.WORKER)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await hub.start()
    if metrics_port is not None and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1", registry=hub.metrics.registry)
    log.info("worker %s running (%s)", hub.deliveries.owner, "broker" if hub.broker else "db queue")
    await stop.wait()
    log.info("worker %s draining", hub.deliveries.owner)
    await hub.stop()
    log.info("worker %s stopped", hub.deliveries.owner)


def supervise(config: Path | None, processes: int, metrics_port: int | None) -> int:
    """Run `processes` single worker processes; restart any that dies; drain on SIGTERM."""
    cmd = [sys.executable, "-m", "ordersync", "worker", "--processes", "1"]
    if config is not None:
        cmd += ["--config", str(config)]
    return supervise_processes(cmd, processes, metrics_port=metrics_port)


def supervise_processes(
    cmd: list[str],
    processes: int,
    *,
    metrics_port: int | None = None,
    own_process_group: bool = False,
    name: str = "worker",
) -> int:
    """Run `processes` copies of `cmd` (a single-process ordersync command); restart any
    that dies unless stopping; on SIGTERM/SIGINT send each SIGTERM and wait for all of them
    to drain. The exit code is the worst child's (0 when all drained cleanly).

    The children share a PROMETHEUS_MULTIPROC_DIR (the inherited one, else a new one);
    `metrics_port` serves their aggregate. `own_process_group` keeps a terminal's Ctrl-C
    away from the children, so each gets exactly one signal: the forwarded SIGTERM.
    """
    mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="ordersync-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": mp_dir}
    if metrics_port is not None:
        _serve_multiprocess_metrics(mp_dir, metrics_port)
    stopping = False

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # noqa: S603 - our own CLI
            cmd, env=env, process_group=0 if own_process_group else None
        )

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in children:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)

    children: list[subprocess.Popen[bytes]] = []
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while len(children) < processes and not stopping:
        children.append(spawn())
    while True:
        time.sleep(0.2)
        for i, p in enumerate(children):
            code = p.poll()
            if code is None:
                continue
            _mark_dead(p.pid)
            if not stopping:
                log.warning("%s pid %d exited with %s; restarting it", name, p.pid, code)
                children[i] = spawn()
                if stopping:  # the signal came while it started: it missed the SIGTERM
                    children[i].send_signal(signal.SIGTERM)
        if stopping and all(p.poll() is not None for p in children):
            return max((p.returncode or 0) for p in children)


def _serve_multiprocess_metrics(mp_dir: str, port: int) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=mp_dir)  # type: ignore[no-untyped-call]
    start_http_server(port, addr="127.0.0.1", registry=registry)


def _mark_dead(pid: int) -> None:
    # Live gauges of a dead process must not linger in the aggregate.
    with contextlib.suppress(Exception):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def default_processes() -> int:
    return max(1, len(os.sched_getaffinity(0)))
