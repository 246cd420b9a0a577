"""From a request body to a validated, resolved spec, in the order the API promises.

1. size: a body over ``caps.max_body_bytes`` is refused (413) before it is parsed;
2. syntax and fields: YAML or JSON (YAML anchors and aliases are refused: they let a
   small body expand into a huge one), then the spec model, with ``tuned:`` samplers
   replaced by placeholders so that no file is read yet (422, with the field path);
3. roots: every path the spec names (store, checkpoints, dataset files, ``tuned:``
   files and stores) must lie under the roots (403);
4. reading: the spec is parsed again for real (``tuned:`` files, inside the roots now),
   checkpoints are expanded and each match must still lie under the roots (a symlink
   cannot lead out), then the grid is resolved from their metadata (422 if they do not
   exist or do not fit);
5. grid size: more than ``caps.max_cells`` cells is refused (413).

So a request outside the roots that is also invalid gets 422, and nothing outside the
roots is read, listed or written.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from rllc.data.datasets import DATASET_NAMES
from rllc.jobs.spec import TUNED, SpecError, SweepSpec, parse_spec

from .config import Caps
from .security import Roots

__all__ = ["RequestError", "Submission", "parse_body", "validate"]


class RequestError(Exception):
    """A request the service refuses: an HTTP status and a JSON-able ``detail``."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


def field_error(field: str, message: str, status: int = 422) -> RequestError:
    """A refusal naming a field: ``detail`` is a list of ``{loc, field, msg, type}`` as
    FastAPI's own validation errors, ``loc`` starting with ``body``."""
    loc = ["body", *[p for p in field.split(".") if p]] if field else ["body"]
    kind = {422: "value_error", 403: "outside_roots", 413: "too_large"}.get(status, "error")
    return RequestError(status, [{"loc": loc, "field": field, "msg": message, "type": kind}])


@dataclass(frozen=True)
class Submission:
    """A spec that passed every check, its grid resolved."""

    spec: SweepSpec
    cells: int

    @property
    def canonical(self) -> dict[str, Any]:
        """The spec as stored in the registry, and compared on resubmission."""
        return self.spec.model_dump(mode="json")


def parse_body(body: bytes, caps: Caps) -> dict[str, Any]:
    """The body as a mapping (YAML or JSON); 413 if too large, 422 if unreadable."""
    if len(body) > caps.max_body_bytes:
        raise RequestError(413, f"request body of {len(body)} bytes exceeds the limit of "
                                f"{caps.max_body_bytes} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise field_error("", "the spec must be UTF-8 text (YAML or JSON)") from None
    try:
        if any(isinstance(ev, yaml.AliasEvent) for ev in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise field_error("", "YAML anchors and aliases are not accepted in a spec")
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise field_error("", f"not valid YAML or JSON ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise field_error("", f"expected a mapping of spec fields, got {type(data).__name__}")
    return data


def _tuned_entries(data: dict[str, Any]) -> dict[str, str]:
    """Field → ``tuned:`` reference of the spec's sampler and component samplers."""
    out = {}
    if isinstance(data.get("sampler"), str) and data["sampler"].startswith(TUNED):
        out["sampler"] = data["sampler"]
    samplers = data.get("component_samplers")
    if isinstance(samplers, dict):
        for pattern, entry in samplers.items():
            if isinstance(entry, str) and entry.startswith(TUNED):
                out[f"component_samplers.{pattern}"] = entry
    return out


def _without_tuned(data: dict[str, Any], tuned: dict[str, str]) -> dict[str, Any]:
    """``data`` with each ``tuned:`` reference replaced by an empty mapping (the defaults),
    so the model can be checked without reading the files they name."""
    out = copy.deepcopy(data)
    for field in tuned:
        if field == "sampler":
            out["sampler"] = {}
        else:
            out["component_samplers"][field.split(".", 1)[1]] = {}
    return out


def spec_paths(spec: SweepSpec, tuned: dict[str, str]) -> list[tuple[str, str]]:
    """(field, path or URI) of everything the spec will read or write."""
    paths = [("store", spec.store)]
    paths += [(f"checkpoints.{i}", c) for i, c in enumerate(spec.checkpoints)]
    paths += [(f"datasets.{i}", d) for i, d in enumerate(spec.datasets)
              if d not in DATASET_NAMES]
    for field, ref in tuned.items():
        paths.append((field, ref.removeprefix(TUNED).rsplit("#", 1)[0]))
    return paths


def _absolute(data: dict[str, Any], shape: SweepSpec) -> dict[str, Any]:
    """``data`` with its local paths made absolute (against this server's working
    directory), so that the runner, wherever Ray starts it, reads the same files."""
    from rllc.jobs.sweep_plan import absolute

    def local(uri: str) -> str:
        return uri if "://" in uri and not uri.startswith("file://") else absolute(uri)

    return {**data, "store": local(shape.store),
            "checkpoints": [local(c) for c in shape.checkpoints],
            "datasets": [d if d in DATASET_NAMES else local(d) for d in shape.datasets]}


def validate(data: dict[str, Any], roots: Roots, caps: Caps, default_store: str,
             parse: Callable[[Any], SweepSpec] = parse_spec) -> Submission:
    """Check a spec mapping in the module's order; ``RequestError`` (422, 403 or 413) on
    the first problem. ``default_store`` fills a spec without ``store``."""
    from rllc.jobs.sweep_plan import expand_checkpoints, resolve

    data = {**data, "store": data.get("store") or default_store}
    tuned = _tuned_entries(data)
    try:
        shape = parse(_without_tuned(data, tuned))
    except SpecError as err:
        raise field_error(err.field, err.message) from None
    for field, uri in spec_paths(shape, tuned):
        if not roots.contains(uri):
            raise field_error(field, f"{uri!r} lies outside the roots this server may use",
                              403)
    try:
        spec = parse(_absolute(data, shape))
        for uri in expand_checkpoints(spec.checkpoints):
            if not roots.contains(uri):
                raise field_error("checkpoints", f"{uri!r} lies outside the roots this "
                                  "server may use", 403)
        plan = resolve(spec)
    except SpecError as err:
        raise field_error(err.field, err.message) from None
    except (OSError, ValueError) as err:  # unreadable checkpoint metadata and the like
        raise field_error("checkpoints", f"{type(err).__name__}: {err}") from None
    if plan.cells > caps.max_cells:
        raise field_error("", f"the grid has {plan.cells} cells, more than this server's "
                          f"limit of {caps.max_cells}", 413)
    return Submission(spec=spec, cells=plan.cells)
