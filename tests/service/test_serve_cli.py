"""``rllc serve`` as a user runs it: its own process and Ray runtime, a refusal without a
token, and a clean stop on SIGTERM (Serve and Ray shut down, exit 0)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

RLLC = [sys.executable, "-m", "rllc.cli.main"]


def test_serve_needs_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RLLC_TOKEN", "RLLC_CONFIG")}
    proc = subprocess.run([*RLLC, "serve", "--port", "1"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: token: no bearer token: set RLLC_TOKEN (or token_file in the RLLC_CONFIG "
        "file); every route but /health requires it"]


@pytest.mark.slow
def test_serve_runs_in_the_foreground_and_stops_cleanly_on_sigterm(tmp_path):
    token = secrets.token_urlsafe(24)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"RLLC_TOKEN": token, "RLLC_ROOTS": str(tmp_path)}
    proc = subprocess.Popen([*RLLC, "serve", "--port", str(port), "--num-cpus", "1", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)
    try:
        line = proc.stdout.readline()  # printed once it serves
        assert line, proc.stderr.read()[-3000:]
        assert json.loads(line) == {"url": f"http://127.0.0.1:{port}",
                                    "store": str(tmp_path.resolve() / "rllc-store"),
                                    "roots": [str(tmp_path.resolve())]}
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/health", timeout=30).json() == {"status": "ok"}
        assert httpx.get(f"{url}/sweeps", timeout=30).status_code == 401
        authed = httpx.get(f"{url}/sweeps", headers={"Authorization": f"Bearer {token}"},
                           timeout=30)
        assert authed.json() == {"sweeps": []}
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert time.monotonic() - start < 60
    assert "rllc serve: stopping" in err and "Traceback" not in err
    assert token not in out + err
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=5)
