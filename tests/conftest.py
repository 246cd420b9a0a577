"""Fixtures shared across test folders: the fused losses' small problem, the kernel
choice of ``compile=True`` and skips where a kernel cannot be built (``cpu_kernels_built``, ``inductor``).

The test process takes rllc's OpenMP wait policy as the CLI does (``rllc.kernels.threads``):
set before torch loads, since OpenMP reads it once; Ray workers and CLI subprocesses the
tests start get it too."""

from rllc.kernels.threads import set_wait_policy

set_wait_policy()

import pytest  # noqa: E402
import torch  # noqa: E402

from rllc.kernels import cpu_kernels  # noqa: E402

#: rows, tokens, d_model, vocabulary of ``problem``
R, N, D, V = 6, 50, 16, 37


@pytest.fixture
def problem():
    """Hidden states, unembedding, bias, targets and an upstream gradient in float64."""
    g = torch.Generator().manual_seed(0)
    dt = torch.float64
    h = torch.randn(R, N, D, dtype=dt, generator=g)
    w = torch.randn(V, D, dtype=dt, generator=g)
    b = torch.randn(V, dtype=dt, generator=g)
    y = torch.randint(0, V, (N,), generator=g)
    weights = torch.randn(R, dtype=dt, generator=g)  # a non-uniform upstream gradient
    return h, w, b, y, weights


@pytest.fixture
def cpu_kernels_built():
    """Skip where rllc's CPU kernels (``cpu_kernels``: the softmax and attention kernels,
    one extension) are not built."""
    if not cpu_kernels.available():
        pytest.skip("rllc's CPU kernels are not built here (no C++ compiler or ninja, "
                    "a failed build, or RLLC_CPU_KERNELS=0)")


@pytest.fixture
def inductor():
    """Skip where ``torch.compile`` cannot build CPU kernels (``fused_ce.compile_available``:
    no g++, c++ or clang++ on PATH, or RLLC_COMPILE=0)."""
    from rllc.kernels.fused_ce import compile_available

    if not compile_available():
        pytest.skip("torch.compile needs a C++ compiler on the CPU: no g++, c++ or clang++ "
                    "on PATH, or RLLC_COMPILE=0")


@pytest.fixture(params=["cpu kernel", "inductor"])
def fused_kernel(request, monkeypatch):
    """Which kernel ``compile=True`` takes on the CPU: the hand-written one (the default
    where it builds) or inductor's (the fallback, and the path on other devices). Each
    skips where it cannot be built."""
    if request.param == "inductor":
        request.getfixturevalue("inductor")
        monkeypatch.setattr(cpu_kernels, "usable", lambda *tensors: False)
    else:
        request.getfixturevalue("cpu_kernels_built")
    return request.param


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> str:
    """A run directory with three checkpoints (steps 0, 1 and 4) of a tiny trained
    2-layer × 2-head model, trained once per test session."""
    from rllc.jobs.train import QUICK, train

    config = QUICK.model_copy(update={"steps": 4, "log_checkpoints": 2, "eval_sequences": 8})
    out = str(tmp_path_factory.mktemp("run"))
    train(config, out, progress=False)
    return out


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on loopback, once per session, with the usual AWS variables set
    (before any Ray runtime starts, so its workers inherit them, as on a configured
    machine). Tests make their own buckets (``s3_bucket``). s3fs' cached filesystems are
    dropped on entry and exit (``rllc.store.files.reset``), so they read these settings."""
    import logging

    from moto.server import ThreadedMotoServer

    from rllc.store import files

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
                            "AWS_SECRET_ACCESS_KEY": "test",
                            "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        files.reset()
        yield endpoint
    files.reset()
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request) -> str:
    """A new, empty bucket on the loopback S3 server: ``s3://<bucket>``."""
    import re
    import uuid

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"{name}-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory) -> dict:
    """``rllc demo --quick --out DIR --json``, run once per session as a user runs it (its
    own process and Ray runtime): the printed JSON, with ``out`` (DIR) and ``stderr``."""
    import json
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("demo") / "quick"
    proc = subprocess.run(
        [sys.executable, "-m", "rllc.cli.main", "demo", "--quick", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"out": str(out),
                                                               "stderr": proc.stderr}
