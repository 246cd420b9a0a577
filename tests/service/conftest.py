"""A real service on loopback for the HTTP tests: a local Ray runtime (2 CPUs, its files in
a short temporary folder so the token test can read every log), the Serve app on a free
port, roots = a fresh folder (the service's store lives there) and the tiny trained run
(``tiny_run``). Module-scoped: the tests of one module share it, in file order."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

TOKEN = "rllc-test-" + secrets.token_hex(16)
#: A fast sampler for the tiny model (as tests/jobs' sweeps).
SAMPLER = {"chains": 2, "draws": 10, "batch_size": 8, "nbeta": 10.0, "step_size": 1e-4,
           "localization": 100.0}
CAPS = {"RLLC_MAX_CELLS": "40", "RLLC_MAX_BODY_BYTES": "65536"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """The running service and what the tests need to reach and restart it."""

    url: str
    port: int
    root: Path
    store: str
    run: str
    ray_dir: str
    settings: Any
    token: str = TOKEN
    sampler: dict[str, Any] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.sampler = dict(SAMPLER)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.auth, timeout=120.0, **kw)

    def restart(self, between: Callable[[], None] | None = None) -> None:
        """Tear the Serve app down (its replica, runners and workers die) and deploy it
        again on the same port and store; ``between`` runs while it is down."""
        from rllc.service.app import serve_app, stop_app

        stop_app()
        if between is not None:
            between()
        serve_app(self.settings, port=self.port)

    def spec(self, name: str, **fields: Any) -> dict[str, Any]:
        """A tiny sweep spec over the last checkpoint: heads 0:0, 0:1 × dyck × seed 0."""
        return {
            "name": name,
            "checkpoints": [f"{self.run}/ckpt-0000004"],
            "components": ["0:0", "0:1"],
            "datasets": ["dyck"],
            "seeds": [0],
            "sampler": SAMPLER,
            "data": {"n_sequences": 32},
            "resources": {"max_workers": 1},
        } | fields

    def wait(self, client: httpx.Client, sweep: str, until: Callable[[dict], bool],
             timeout: float = 180.0) -> dict[str, Any]:
        """Poll ``GET /sweeps/{sweep}`` until ``until(status)``."""
        start = time.monotonic()
        while True:
            status = client.get(f"/sweeps/{sweep}").json()
            if until(status):
                return status
            assert time.monotonic() - start < timeout, status
            time.sleep(0.3)


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory) -> Iterator[Server]:
    import ray
    from ray import serve

    from rllc.service.app import serve_app
    from rllc.service.config import load_config

    root = tmp_path_factory.mktemp("service-root")
    # short: Ray's socket paths live under it
    ray_dir = tempfile.mkdtemp(prefix="rllc-ray-", dir="/tmp")
    config = load_config(env={"RLLC_TOKEN": TOKEN, "RLLC_ROOTS": f"{root},{tiny_run}",
                              **CAPS})
    assert not ray.is_initialized(), "another test left Ray running"
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             _temp_dir=ray_dir)
    port = free_port()
    try:
        serve_app(config.settings(), port=port)
        yield Server(url=f"http://127.0.0.1:{port}", port=port, root=root,
                     store=str(config.store), run=tiny_run, ray_dir=ray_dir,
                     settings=config.settings())
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)


@pytest.fixture
def no_server_env(monkeypatch):
    """No RLLC_SERVER from the environment: the CLI works locally unless told."""
    monkeypatch.delenv("RLLC_SERVER", raising=False)
    monkeypatch.setenv("RLLC_TOKEN", TOKEN)
    return os.environ
