"""``rllc serve``: the HTTP API on Ray Serve, in the foreground until SIGTERM or Ctrl-C.

Configuration comes from the environment (``RLLC_TOKEN``, ``RLLC_ROOTS``, …) over the
file named by ``--config`` or ``RLLC_CONFIG`` (``rllc.service.config``); without a token
it refuses to start (exit 2). On SIGTERM or SIGINT it removes the Serve app (the runners
and their workers stop; queued and running sweeps continue when the service starts
again), shuts Serve down and disconnects from Ray, or stops the local runtime it started.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import JsonFlag, UsageError, emit, handle_errors
from .sweep import Address, NumCpus


@handle_errors
def serve_command(
    host: Annotated[str, typer.Option(
        "--host", metavar="H", help="Address to bind. Keep 127.0.0.1 and reach it through "
        "an SSH tunnel or a TLS proxy; never expose it (README: Running on a cluster).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="P", min=1, max=65535,
                                      help="HTTP port.")] = 8000,
    config: Annotated[Path | None, typer.Option(
        "--config", metavar="FILE", help="YAML settings (token_file, roots, store, caps); "
        "the RLLC_* environment variables override it (docs/service.md).")] = None,
    address: Address = None,
    num_cpus: NumCpus = None,
    as_json: JsonFlag = False,
) -> None:
    """Serve the HTTP API (docs/service.md) until SIGTERM or Ctrl-C."""
    import logging

    import ray
    from ray import serve

    from rllc.service.app import serve_app, stop_app
    from rllc.service.config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    ray.init(address=address or "local", num_cpus=None if address else num_cpus,
             include_dashboard=False, logging_level=logging.WARNING)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve_app(cfg.settings(), host=host, port=port)
        url = f"http://{host}:{port}"
        print(f"rllc serve: {url} (store {cfg.store}); SIGTERM or Ctrl-C stops it",
              file=sys.stderr)
        emit({"url": url, "store": cfg.store, "roots": list(cfg.roots)}, as_json, _human)
        while not stop.wait(0.5):
            pass
    finally:
        print("rllc serve: stopping", file=sys.stderr)
        with contextlib.suppress(Exception):  # never deployed, or Serve already gone
            stop_app()
        serve.shutdown()
        ray.shutdown()


def _human(r: dict[str, Any]) -> str:
    return f"serving {r['url']} (store {r['store']}, roots {', '.join(r['roots'])})"
