"""The HTTP API: a FastAPI app served by one Ray Serve deployment (``RllcService``).

    serve_app(config.settings(), host="127.0.0.1", port=8000)   # what `rllc serve` does

Handlers are thin: they parse the request and call ``ServiceCore`` (``rllc.service.core``),
whose ``RequestError`` becomes the answer's status and ``detail``. A middleware checks
the bearer token before any route runs (401, ``/health`` is open; ``/docs`` and
``/openapi.json`` too where ``open_docs`` is set) and refuses a declared body over the
cap (413). Nothing here logs headers, and no answer echoes them. docs/service.md
describes the routes.
"""

# no `from __future__ import annotations`: Serve pickles the ingress class by value, and
# FastAPI must then find its parameter types as objects, not names

import logging
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.concurrency import run_in_threadpool

from .config import ServiceSettings
from .core import ServiceCore
from .registry import Job
from .security import bearer_ok
from .submission import RequestError

log = logging.getLogger(__name__)

APP_NAME = "rllc"
#: Sweep and tune ids in paths: ``rllc.store.layout.validate_id``'s pattern.
ID = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
OPEN_PATHS = ("/health",)
DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/openapi.json")

api = FastAPI(
    title="rllc",
    summary="Sweeps of (r)LLC estimates on a Ray cluster: submit, follow, cancel, query.",
    version="1",
    docs_url="/docs",
)

SweepId = Annotated[str, Path(pattern=ID, max_length=128, description="The sweep id.")]
TuneId = Annotated[str, Path(pattern=ID, max_length=128, description="The tune id.")]


#: This process's settings, set by the replica (``install``). A module-level holder, not
#: ``api.state``: Serve pickles the ingress class by value, and with it a copy of ``api``,
#: while module functions such as ``guard`` and ``install`` are imported by reference.
_STATE: dict[str, ServiceSettings] = {}


def install(settings: ServiceSettings) -> None:
    """Give this process's middleware its settings (the replica's ``__init__``)."""
    _STATE["settings"] = settings


def _settings() -> ServiceSettings | None:
    return _STATE.get("settings")


@api.middleware("http")
async def guard(request: Request, call_next):
    """401 without the bearer token (constant-time check of its digest), then 413 for a
    body declared larger than the cap, before any route runs."""
    settings = _settings()
    path = request.url.path
    open_path = path in OPEN_PATHS or (settings is not None and settings.open_docs
                                       and path in DOC_PATHS)
    if not open_path and (settings is None
                          or not bearer_ok(request.headers.get("authorization"),
                                           settings.token_sha256)):
        return JSONResponse({"detail": "missing or invalid bearer token"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})
    declared = request.headers.get("content-length")
    if settings is not None and declared and declared.isdigit() \
            and int(declared) > settings.caps.max_body_bytes:
        return JSONResponse({"detail": f"request body of {declared} bytes exceeds the limit "
                                       f"of {settings.caps.max_body_bytes} bytes"},
                            status_code=413)
    return await call_next(request)


@api.exception_handler(RequestError)
async def _refused(request: Request, err: RequestError) -> JSONResponse:
    return JSONResponse({"detail": err.detail}, status_code=err.status)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, read no further than ``limit`` + 1 bytes (413 above it)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(
    name="RllcService",
    num_replicas=1,  # one registry writer and one set of runners
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=64,
)
@serve.ingress(api)
class RllcService:
    """The replica: holds the ``ServiceCore`` (registry, runners) for its lifetime."""

    def __init__(self, settings: ServiceSettings) -> None:
        install(settings)
        self.core = ServiceCore(settings)

    @api.get("/health")
    def health(self) -> dict[str, str]:
        """Liveness; needs no token."""
        return {"status": "ok"}

    @api.post("/sweeps", status_code=201)
    async def submit(self, request: Request) -> JSONResponse:
        """Submit a sweep spec (YAML or JSON body): 201 with ``{sweep, state}``; the same
        spec under the same name again: 200, the existing sweep; another spec: 409."""
        body = await _body(request, self.core.settings.caps.max_body_bytes)
        status, out = await run_in_threadpool(self.core.submit, body, Job.SWEEP)
        return JSONResponse(out, status_code=status)

    @api.get("/sweeps")
    def list_sweeps(self) -> dict[str, Any]:
        """Every sweep this service was given, with its state and progress."""
        return self.core.list()

    @api.get("/sweeps/{sweep_id}")
    def status(self, sweep_id: SweepId) -> dict[str, Any]:
        """``{sweep, state, cells_done, cells_failed, cells_total, eta_seconds}``."""
        return self.core.status(sweep_id)

    @api.delete("/sweeps/{sweep_id}")
    def cancel(self, sweep_id: SweepId) -> dict[str, Any]:
        """Cancel: the workers stop, finished cells stay; ``POST …/resume`` continues."""
        return self.core.cancel(sweep_id)

    @api.post("/sweeps/{sweep_id}/resume")
    def resume(self, sweep_id: SweepId) -> dict[str, Any]:
        """Continue a cancelled or failed sweep from its done cells."""
        return self.core.resume(sweep_id)

    @api.get("/sweeps/{sweep_id}/llc")
    def llc(
        self,
        sweep_id: SweepId,
        component: str | None = None,
        dataset: str | None = None,
        checkpoint: str | None = None,
        burnin: Annotated[str | None, Query(pattern=r"^(auto|\d+)$")] = None,
        estimator: Annotated[str | None, Query(pattern=r"^(plain|paired)$")] = None,
        metric: Annotated[list[str] | None, Query()] = None,
    ) -> dict[str, Any]:
        """The LLC table, as ``rllc query --format json`` prints it."""
        return self.core.llc(sweep_id, component=component, dataset=dataset,
                             checkpoint=checkpoint,
                             burnin=None if burnin is None else
                             (burnin if burnin == "auto" else int(burnin)),
                             estimator=estimator, metrics=metric or None)

    @api.get("/sweeps/{sweep_id}/traces")
    def traces(
        self,
        sweep_id: SweepId,
        variable: str = "loss",
        component: str | None = None,
        dataset: str | None = None,
        checkpoint: str | None = None,
        format: Annotated[str, Query(pattern=r"^(json|npy)$")] = "json",
    ) -> Any:
        """One trace variable of a selection, as labelled JSON or a ``.npy`` array (its
        dims in the ``X-Rllc-Dims`` header)."""
        out = self.core.traces(sweep_id, variable, format, component=component,
                               dataset=dataset, checkpoint=checkpoint)
        if isinstance(out, bytes):
            return Response(out, media_type="application/octet-stream")
        return out

    @api.get("/sweeps/{sweep_id}/failures")
    def failures(self, sweep_id: SweepId) -> dict[str, Any]:
        """Each failed cell with its error text."""
        return self.core.failures(sweep_id)

    @api.post("/tune", status_code=201)
    async def tune(self, request: Request) -> JSONResponse:
        """Submit a tune spec (a sweep spec with a ``search:`` block): 201 ``{tune, state}``."""
        body = await _body(request, self.core.settings.caps.max_body_bytes)
        status, out = await run_in_threadpool(self.core.submit, body, Job.TUNE)
        return JSONResponse(out, status_code=status)

    @api.get("/tune/{tune_id}")
    def tune_status(self, tune_id: TuneId) -> dict[str, Any]:
        """A tune's state, trials done and, once finished, its best sampler config."""
        return self.core.tune_status(tune_id)


def serve_app(settings: ServiceSettings, host: str = "127.0.0.1", port: int = 8000,
              name: str = APP_NAME) -> None:
    """Start Serve's HTTP proxy on ``host:port`` and deploy the service (returns once it
    answers). Needs a Ray runtime (``ray.init``) in this process."""
    serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
    serve.run(RllcService.bind(settings), name=name, route_prefix="/", blocking=False)


def stop_app(name: str = APP_NAME) -> None:
    """Remove the deployment: its replica dies, and with it the runners and their
    workers; queued and running sweeps continue when the service is deployed again."""
    serve.delete(name)
