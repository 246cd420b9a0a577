"""A Python client of the HTTP service, on the standard library alone (no server extras).

    from rllc.service.client import Client
    c = Client("http://127.0.0.1:8000")          # token from RLLC_TOKEN, URL from RLLC_SERVER
    c.submit("spec.yaml")                         # {sweep, state, …}
    c.wait("heads-over-training")                 # polls until done, failed or cancelled
    rows = c.query("heads-over-training", component="1:*")["rows"]

Every method returns the route's JSON answer (``traces(..., fmt="npy")`` a numpy array).
A refusal raises ``ServiceError`` with the HTTP status and the server's ``detail``; the
token travels only in the ``Authorization`` header and is never part of an error.
"""

from __future__ import annotations

import io
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SERVER_ENV = "RLLC_SERVER"
TOKEN_ENV = "RLLC_TOKEN"
#: States after which a sweep changes no more (unless resumed).
FINAL_STATES = ("done", "failed", "cancelled")


class ServiceError(RuntimeError):
    """The server refused a request (``status`` ≥ 400) or could not be reached (0)."""

    def __init__(self, status: int, detail: Any) -> None:
        self.status, self.detail = status, detail
        super().__init__(f"HTTP {status}: {describe(detail)}" if status else str(detail))


def describe(detail: Any) -> str:
    """One line from a ``detail``: a message, or FastAPI-style ``[{loc, msg}]`` as
    ``field: message``."""
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        parts = []
        for d in detail:
            loc = d.get("field") or ".".join(str(x) for x in d.get("loc", []) if x != "body")
            parts.append(f"{loc}: {d.get('msg')}" if loc else str(d.get("msg")))
        return "; ".join(parts)
    return str(detail)


class Client:
    """The service's routes as methods (docs/service.md)."""

    def __init__(self, url: str | None = None, token: str | None = None,
                 timeout: float = 120.0) -> None:
        url = url or os.environ.get(SERVER_ENV)
        if not url:
            raise ValueError(f"no server: pass a URL or set {SERVER_ENV}")
        self.url = url.rstrip("/")
        self._token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        self.timeout = timeout

    def __repr__(self) -> str:  # never the token
        return f"Client({self.url!r})"

    # ---- transport ---------------------------------------------------------------------

    def _request(self, method: str, path: str, body: bytes | None = None,
                 query: Mapping[str, Any] | None = None, content_type: str | None = None,
                 raw: bool = False) -> Any:
        if query:
            pairs = [(k, v) for k, v in query.items() if v is not None and not isinstance(v, list)]
            pairs += [(k, x) for k, v in query.items() if isinstance(v, list) for x in v]
            path = f"{path}?{urllib.parse.urlencode(pairs)}"
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data = resp.read()
        except urllib.error.HTTPError as err:
            text = err.read().decode("utf-8", "replace")
            try:
                detail = json.loads(text).get("detail", text)
            except (ValueError, AttributeError):
                detail = text or err.reason
            raise ServiceError(err.code, detail) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ServiceError(0, f"cannot reach {self.url}: {reason}") from None
        return data if raw else json.loads(data)

    # ---- routes ------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def submit(self, spec: str | Path | Mapping[str, Any]) -> dict[str, Any]:
        """Submit a sweep: a spec file's path (YAML or JSON, sent as it is) or a mapping."""
        body, kind = _spec_body(spec)
        return self._request("POST", "/sweeps", body, content_type=kind)

    def list(self) -> list[dict[str, Any]]:
        return self._request("GET", "/sweeps")["sweeps"]

    def status(self, sweep: str) -> dict[str, Any]:
        return self._request("GET", f"/sweeps/{_quote(sweep)}")

    def cancel(self, sweep: str) -> dict[str, Any]:
        return self._request("DELETE", f"/sweeps/{_quote(sweep)}")

    def resume(self, sweep: str) -> dict[str, Any]:
        return self._request("POST", f"/sweeps/{_quote(sweep)}/resume")

    def query(self, sweep: str, *, component: str | None = None, dataset: str | None = None,
              checkpoint: str | None = None, burnin: int | str | None = None,
              estimator: str | None = None, metrics: list[str] | None = None
              ) -> dict[str, Any]:
        """The LLC table: ``{rows, …}`` as ``rllc query --format json``."""
        return self._request("GET", f"/sweeps/{_quote(sweep)}/llc", query={
            "component": component, "dataset": dataset, "checkpoint": checkpoint,
            "burnin": None if burnin is None else str(burnin), "estimator": estimator,
            "metric": list(metrics or []),
        })

    def traces(self, sweep: str, variable: str = "loss", fmt: str = "json", **filters: Any):
        """One trace variable of a selection: labelled JSON, or (``fmt="npy"``) an array."""
        out = self._request("GET", f"/sweeps/{_quote(sweep)}/traces",
                            query={"variable": variable, "format": fmt, **filters},
                            raw=fmt == "npy")
        if fmt == "npy":
            import numpy as np

            return np.load(io.BytesIO(out), allow_pickle=False)
        return out

    def failures(self, sweep: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/sweeps/{_quote(sweep)}/failures")["failures"]

    def tune(self, spec: str | Path | Mapping[str, Any]) -> dict[str, Any]:
        """Submit a tune spec (a sweep spec with a ``search:`` block)."""
        body, kind = _spec_body(spec)
        return self._request("POST", "/tune", body, content_type=kind)

    def tune_status(self, tune: str) -> dict[str, Any]:
        return self._request("GET", f"/tune/{_quote(tune)}")

    def wait(self, sweep: str, poll: float = 1.0, timeout: float | None = None
             ) -> dict[str, Any]:
        """Poll ``status`` until the sweep is done, failed or cancelled (``TimeoutError``
        after ``timeout`` seconds)."""
        start = time.monotonic()
        while True:
            out = self.status(sweep)
            if out["state"] in FINAL_STATES:
                return out
            if timeout is not None and time.monotonic() - start > timeout:
                raise TimeoutError(f"sweep {sweep} still {out['state']} after {timeout} s")
            time.sleep(poll)


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _spec_body(spec: str | Path | Mapping[str, Any]) -> tuple[bytes, str]:
    if isinstance(spec, Mapping):
        return json.dumps(dict(spec)).encode(), "application/json"
    return Path(spec).read_bytes(), "application/yaml"
