"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import functools
import os

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.responses import Response

from ordersync.entrypoints.api.deps import hub, json_response

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", summary="Dependencies are reachable and the hub is running")
async def readyz(request: Request) -> Response:
    checks = await hub(request).checks()
    ready = all(v == "ok" for v in checks.values())
    return json_response(
        {"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503
    )


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    """This process's metrics; under a supervisor (`serve --processes N`, which shares a
    PROMETHEUS_MULTIPROC_DIR among its children) those of every process, whichever answers."""
    mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    registry = _aggregate(mp_dir) if mp_dir else hub(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@functools.cache
def _aggregate(mp_dir: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=mp_dir)  # type: ignore[no-untyped-call]
    return registry
