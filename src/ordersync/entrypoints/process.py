"""Run `ordersync serve` as a real child process (demo, end-to-end tests, benchmarks)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HubProcess:
    """`command`: "serve" (HTTP on `port`) or "worker" (its metrics on `port`)."""

    def __init__(
        self,
        config: Path,
        port: int,
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        command: str = "serve",
        args: tuple[str, ...] = (),
    ) -> None:
        self.args = args
        self.config = config
        self.command = command
        self.port = port
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        cmd = [
            sys.executable,
            *(os.environ.get("ORDERSYNC_HUB_CMD", "-m ordersync").split()),
            self.command,
            "--config",
            str(self.config),
        ]
        if self.command == "serve":
            cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        else:
            cmd += ["--metrics-port", str(self.port)]
        cmd += self.args
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)  # noqa: S603 - our own CLI
        log.close()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"hub exited with {self.proc.returncode}; see {self.log_path}"
                    )
                path = "/readyz" if self.command == "serve" else "/metrics"
                try:
                    async with session.get(
                        f"{self.url}{path}", timeout=aiohttp.ClientTimeout(total=2)
                    ) as r:
                        if r.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"hub not ready after {timeout}s; see {self.log_path}")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, exactly like a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the graceful drain."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
