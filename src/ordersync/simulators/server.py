"""What every platform simulator shares: an aiohttp app served on loopback."""

from __future__ import annotations

from aiohttp import web


class LoopbackServer:
    """Subclasses provide `app()`; `start()` serves it on a free port (or `port`) and
    returns its base URL, `stop()` shuts it down."""

    base_url: str | None = None
    _runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        raise NotImplementedError

    async def start(self, port: int = 0, *, host: str = "127.0.0.1") -> str:
        self._runner = web.AppRunner(self.app(), shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.base_url = f"http://{bound_host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
