"""Start real ``dsdn-coordinator`` processes for tests: free ports, readiness, logs, clean stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from deploy.cluster import free_port


async def wait_http_ok(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0,
                       headers: dict[str, str] | None = None) -> bool:
    """Poll ``url`` until it answers 200 (True), the process exits or the timeout passes (False)."""
    async with httpx.AsyncClient(timeout=2, headers=headers) as http:
        with trio.move_on_after(timeout):
            while proc.poll() is None:
                try:
                    if (await http.get(url)).status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)
    return False


class CoordinatorProcess:
    def __init__(self, data_dir: Path, log_path: Path, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {**os.environ, "USE_MOCK_DA": "true", "COORDINATOR_PORT": str(self.port),
                    "COORDINATOR_DATA_DIR": str(data_dir), "PUBLISH_INTERVAL_MS": "20", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CoordinatorProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        self.proc = subprocess.Popen([sys.executable, "-m", "deploy.coordinator"], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        return self

    async def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.proc is not None
        if not await wait_http_ok(f"{self.url}/ready", self.proc, timeout):
            state = f"exited with {self.proc.returncode}" if self.proc.poll() is not None else "not ready"
            raise AssertionError(f"coordinator {state} after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        with trio.move_on_after(timeout):
            while self.proc.poll() is None:
                await trio.sleep(0.02)
            return self.proc.returncode
        raise AssertionError(f"coordinator still running after {timeout}s:\n{self.log()}")

    def stop_now(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
