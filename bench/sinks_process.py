"""Standard Webhooks sinks in their own process, for the end-to-end benchmarks.

    BENCH_SINK_SECRETS='{"erp": "whsec_...", ...}' python -m bench.sinks_process

Starts one `Sink` (signature check, dedupe, ledger) per name on a free loopback port, then
prints one JSON line on stdout: {"pid", "control", "sinks": {name: events_url}}.

The control server answers GET /stats (counts per sink) and GET /ledger (every sink's
ledger, compact: [order_id, external_id, type, received_at, attempt] per entry; received_at is
time.monotonic(), which on Linux is one clock for all processes). SIGUSR1 prints the stats
on stderr; SIGTERM or SIGINT stops the process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from aiohttp import web

from ordersync.simulators.sinks import Sink


class LeanSink(Sink):
    """A `Sink` that keeps only what the benchmark reads of each event, so 300,000 applied
    events fit in a small process (and the sinks do not compete with the hub for memory)."""

    async def _receive(self, request: web.Request) -> web.Response:
        response = await super()._receive(request)
        # No await since the parent appended (if it did): ledger[-1] is this request's entry,
        # or an earlier, already trimmed one.
        if self.ledger:
            entry = self.ledger[-1]
            entry.data = {"external_id": entry.data.get("external_id")}
        return response

    def created(self) -> int:
        return sum(1 for e in self.ledger if e.type == "order.created")


def stats(sinks: dict[str, LeanSink]) -> dict[str, Any]:
    return {name: {**s.stats(), "created": s.created()} for name, s in sinks.items()}


def ledgers(sinks: dict[str, LeanSink]) -> dict[str, list[list[Any]]]:
    return {
        name: [
            [e.order_id, e.data.get("external_id"), e.type, e.received_at, e.attempt]
            for e in s.ledger
        ]
        for name, s in sinks.items()
    }


async def serve(secrets: dict[str, str]) -> None:
    sinks = {name: LeanSink(name, secret) for name, secret in secrets.items()}
    for sink in sinks.values():
        await sink.start()

    async def get_stats(_request: web.Request) -> web.Response:
        return web.json_response(stats(sinks))

    async def get_ledger(_request: web.Request) -> web.Response:
        return web.json_response(ledgers(sinks))

    control = web.Application()
    control.router.add_get("/stats", get_stats)
    control.router.add_get("/ledger", get_ledger)
    runner = web.AppRunner(control, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(
        signal.SIGUSR1, lambda: print(json.dumps(stats(sinks)), file=sys.stderr, flush=True)
    )
    ready = {
        "pid": os.getpid(),
        "control": f"http://{host}:{port}",
        "sinks": {name: s.events_url for name, s in sinks.items()},
    }
    print(json.dumps(ready), flush=True)
    await stop.wait()
    await runner.cleanup()
    for sink in sinks.values():
        await sink.stop()


def main() -> None:
    secrets = json.loads(os.environ["BENCH_SINK_SECRETS"])
    try:
        import uvloop

        uvloop.run(serve(secrets))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve(secrets))


if __name__ == "__main__":
    main()
