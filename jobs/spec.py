"""The sweep spec: one frozen pydantic model, read from a YAML or JSON file.

    name: heads-over-training          # the sweep id (letters, digits, - and _)
    checkpoints: runs/demo/ckpt-*      # list, glob, run directory, or s3:// URIs
    components: ["0:*", "1:7", all]    # "L:*" becomes one cell per head (expand_layers)
    datasets: [train, dyck]            # built-in names or URIs of token arrays / text
    seeds: [0, 1]
    sampler: {step_size: 1e-3, localization: 200, nbeta: 30, chains: 4, draws: 200}
                                       # or: "tuned:<path of a JSON sampler config>"
    component_samplers:                # optional: ε, γ, nβ per component pattern
      "0:*": {step_size: 3e-3, localization: 300}
      "1:*": "tuned:./rllc-store#demo-tune-l1"
    store: ./rllc-store                # or s3://bucket/prefix
    data: {n_sequences: 256}           # how each loss dataset is drawn
    compute: {precision: float32, batch_heads: true}   # how head cells are computed
    resources: {max_workers: 4}        # Ray actors, retries, in-flight bound
    metrics: [llc, hessian_trace, fisher_trace, hessian_rank, ablation]   # default [llc]
    baselines: {sequences: 8, probes: 32, rank_tol: 1e-3}   # how the baselines are computed

Relative paths (checkpoints, store, datasets, ``tuned:``) are relative to the working
directory, as the default store ``./rllc-store`` is; the driver makes them absolute
before workers see them. Each cell's seed replaces ``sampler.seed``; a cell whose
component matches a ``component_samplers`` pattern (fnmatch, the first in mapping order)
takes that pattern's ``step_size``, ``localization`` and ``nbeta`` (``SweepSpec.sampler_for``).

Validation here is pure (no files except a ``tuned:`` sampler); what needs the
checkpoints (globs, head ranges) is checked by ``rllc.jobs.sweep_plan.resolve``. Every
error names its field, e.g. ``sampler.step_size: step_size (ε) must be …``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from rllc.data.datasets import DATASET_NAMES
from rllc.data.user import is_uri
from rllc.estimators import SelectionError, SGLDConfig
from rllc.kernels.precision import HELP as PRECISION_HELP
from rllc.kernels.precision import Precision
from rllc.models.components import parse_component
from rllc.store import DEFAULT_STORE
from rllc.store.layout import validate_id

from .metrics import BaselineOptions, Metric, parse_metrics

TUNED = "tuned:"


class SpecError(ValueError):
    """A sweep spec is invalid; the message starts with the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class DataOptions(BaseModel):
    """How each (checkpoint, dataset) loss dataset is drawn (``rllc.data.load_dataset``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_sequences: int = Field(256, ge=1, description="Sequences in each loss dataset (n).")
    n_ctx: int | None = Field(
        None, ge=2, description="Sequence length (default: the model's context length)."
    )
    split: Literal["train", "eval"] = Field("eval", description="Data split to draw from.")
    seed: int = Field(0, description="Seed of the dataset draw (the same for every cell).")


class ComputeOptions(BaseModel):
    """How cells are computed (the head fast path, ``rllc.models.fastpath``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    precision: Precision = Field(
        Precision.FLOAT32,
        description=f"Head cells' matmul precision ({PRECISION_HELP}). L_n(w*) is taken "
        "in the same numerics; recorded with the sweep, so a resume runs as it started.",
    )
    batch_heads: bool = Field(
        True,
        description="Sample the heads of one layer that share checkpoint, dataset and seed "
        "as one batch (one work unit): the frozen prefix is computed once for all of them. "
        "Each head's traces are those it gets alone, up to float reassociation.",
    )


class Resources(BaseModel):
    """What each Ray actor asks for, and how the driver bounds and retries work."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_gpus: float | None = Field(
        None,
        ge=0,
        description="GPUs per actor; null: 1 when the cluster has GPUs, else 0 (CPU).",
    )
    num_cpus: float = Field(
        1.0, gt=0, description="CPUs per actor (also its torch thread count)."
    )
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per actor, e.g. {sweep-node: 1} to pin actors to "
        "nodes that advertise it.",
    )
    max_workers: int | None = Field(
        None, ge=1, description="Most actors at once (null: as many as the cluster fits)."
    )
    cells_in_flight: int = Field(
        2,
        ge=1,
        description="Work units (one cell, or the batched heads of a layer) submitted to one "
        "actor at a time (one runs, the rest wait).",
    )
    max_retries: int = Field(
        2, ge=0, description="Reruns of a failing cell before its failure is recorded."
    )
    max_restarts: int = Field(
        3, ge=0, description="Ray restarts of an actor whose process or node died."
    )

    @field_validator("custom")
    @classmethod
    def _custom(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, x in v.items() if not x > 0 or k in ("CPU", "GPU")]
        if bad:
            raise ValueError(
                f"custom resources need amounts > 0 and names other than CPU/GPU, got {bad}"
            )
        return v


#: The sampler settings a spec may set per component (``component_samplers``); the rest
#: (chains, draws, batch size, burn-in, estimator, …) shape or read the stored traces and
#: are the sweep's.
COMPONENT_FIELDS = ("step_size", "localization", "nbeta")


class ComponentSampler(BaseModel):
    """Sampler settings of the components that match one pattern of
    ``component_samplers``: each given field replaces the sweep sampler's. Given as a
    mapping, or as ``tuned:<path>`` / ``tuned:<store URI>#<tune id>`` (``read_tuned``), of
    which only these fields are taken."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step_size: float | None = Field(None, description="ε of these components.")
    localization: float | None = Field(None, description="γ of these components.")
    nbeta: float | None = Field(None, description="nβ of these components.")

    @model_validator(mode="before")
    @classmethod
    def _tuned_or_mapping(cls, v: Any) -> Any:
        if isinstance(v, str):
            if not v.startswith(TUNED):
                raise ValueError(f"expected a mapping of {', '.join(COMPONENT_FIELDS)} or "
                                 f"'tuned:<path>', got {v!r}")
            tuned = read_tuned(v.removeprefix(TUNED))
            return {k: tuned[k] for k in COMPONENT_FIELDS if tuned.get(k) is not None}
        if isinstance(v, dict):
            other = [k for k in v if k not in COMPONENT_FIELDS]
            if other:
                raise ValueError(
                    f"only {', '.join(COMPONENT_FIELDS)} may differ per component, not "
                    f"{', '.join(map(str, other))} (set those in sampler: they shape the "
                    "sweep's stored traces and estimates)"
                )
        return v

    @field_validator(*COMPONENT_FIELDS)
    @classmethod
    def _valid(cls, v: float | None, info) -> float | None:
        if v is not None:  # the sampler's own checks and messages
            try:
                SGLDConfig.model_validate({info.field_name: v})
            except ValidationError as err:
                raise ValueError(err.errors()[0]["msg"].removeprefix("Value error, ")) from None
        return v

    def overrides(self) -> dict[str, float]:
        """The fields this entry sets."""
        return self.model_dump(exclude_none=True)


class SweepSpec(BaseModel):
    """A sweep: checkpoints × components × datasets × seeds, one SGLD run per cell."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Sweep id: letters, digits, - and _.")
    checkpoints: list[str] = Field(
        min_length=1,
        description="Checkpoint directories, globs or run directories (local or s3://).",
    )
    components: list[str] = Field(
        min_length=1, description='Components: "L:H", "L:*", all, embed, unembed, patterns.'
    )
    expand_layers: bool = Field(
        True, description='Split each "L:*" into one cell per head "L:0", "L:1", …'
    )
    datasets: list[str] = Field(
        default_factory=lambda: ["train"], min_length=1, description="Dataset names or URIs."
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    sampler: SGLDConfig = Field(
        default_factory=SGLDConfig,
        description="SGLD settings (each cell's seed replaces sampler.seed), or the string "
        "'tuned:<path>' of a JSON file holding them (e.g. `rllc tune --json` output).",
    )
    component_samplers: dict[str, ComponentSampler] = Field(
        default_factory=dict,
        description="Sampler settings per component pattern (fnmatch on the cell's "
        'component label: "0:*" matches 0:3, "all" only all; the first matching pattern '
        "wins, cells matching none use sampler): a mapping of step_size, localization, "
        "nbeta, or 'tuned:<path>' / 'tuned:<store URI>#<tune id>' (only those fields).",
    )
    store: str = Field(DEFAULT_STORE, description="Trace store: a path or s3://bucket/prefix.")
    data: DataOptions = Field(default_factory=DataOptions)
    compute: ComputeOptions = Field(default_factory=ComputeOptions)
    resources: Resources = Field(default_factory=Resources)
    metrics: list[Metric] = Field(
        default_factory=lambda: [Metric.LLC], min_length=1,
        description="What each cell computes: llc (SGLD traces) and baselines "
        "(hessian_trace, fisher_trace, hessian_rank, ablation; rllc.jobs.baselines).",
    )
    baselines: BaselineOptions = Field(default_factory=BaselineOptions)

    @field_validator("metrics", mode="before")
    @classmethod
    def _metrics(cls, v: Any) -> Any:
        return parse_metrics([v] if isinstance(v, str) else v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_id(v)

    @field_validator("checkpoints", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("checkpoints", "components", "datasets", "seeds")
    @classmethod
    def _unique(cls, v: list, info) -> list:
        dupes = sorted({str(x) for x in v if v.count(x) > 1})
        if dupes:
            raise ValueError(f"duplicate {info.field_name}: {', '.join(dupes)}")
        return v

    @field_validator("components")
    @classmethod
    def _components(cls, v: list[str]) -> list[str]:
        for text in v:
            try:
                parse_component(text)
            except SelectionError as err:
                raise ValueError(str(err)) from None
        return v

    @field_validator("datasets")
    @classmethod
    def _datasets(cls, v: list[str]) -> list[str]:
        for name in v:
            check_dataset(name)
        return v

    @field_validator("component_samplers", mode="before")
    @classmethod
    def _patterns(cls, v: Any) -> Any:
        if isinstance(v, dict):
            bad = [k for k in v if not isinstance(k, str) or not k.strip()]
            if bad:
                raise ValueError(f"patterns must be non-empty strings, got {bad}")
        return v

    def component_pattern(self, component: str) -> str | None:
        """The first ``component_samplers`` pattern that ``component`` matches, or None."""
        for pattern in self.component_samplers:
            if fnmatchcase(component, pattern):
                return pattern
        return None

    def sampler_for(self, component: str | None) -> SGLDConfig:
        """The sampler config of ``component``'s cells: ``sampler`` with the settings of
        its ``component_samplers`` pattern, if one matches (None: ``sampler``)."""
        pattern = None if component is None else self.component_pattern(component)
        if pattern is None:
            return self.sampler
        return self.sampler.model_copy(update=self.component_samplers[pattern].overrides())

    @field_validator("sampler", mode="before")
    @classmethod
    def _tuned(cls, v: Any) -> Any:
        if isinstance(v, str):
            if not v.startswith(TUNED):
                raise ValueError(f"expected a mapping of SGLD settings or 'tuned:<path>', got {v!r}")
            return read_tuned(v.removeprefix(TUNED))
        return v


def check_dataset(name: str) -> str:
    """``name`` if it is a built-in dataset (``generated`` among them: text sampled from
    the checkpoint itself) or looks like a URI, else ``ValueError``."""
    if name not in DATASET_NAMES and not is_uri(name):
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}, or a "
            "path / s3:// URI of a text file, .npy or Zarr token array"
        )
    return name


def read_tuned(path: str) -> dict[str, Any]:
    """The sampler config in a JSON file: either the config itself or a tune result with
    the config under ``best`` (what ``rllc tune --json`` prints); or, for
    ``<store URI>#<tune id>``, the best config of that tune in that store."""
    if "#" in path:
        return _tuned_in_store(*path.rsplit("#", 1))
    try:
        loaded = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"tuned sampler file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"tuned sampler file {path} is not valid JSON ({err.msg})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("best"), dict):
        loaded = loaded["best"]
    if not isinstance(loaded, dict):
        raise ValueError(f"tuned sampler file {path} does not hold a JSON object")
    return loaded


def _tuned_in_store(uri: str, tune_id: str) -> dict[str, Any]:
    from rllc.store import StoreError, open_store
    from rllc.store.tuning import tuning_attrs

    try:
        attrs = tuning_attrs(open_store(uri, read_only=True), tune_id)
    except StoreError as err:
        raise ValueError(str(err)) from None
    if "best" not in attrs:
        raise ValueError(f"tune {tune_id!r} in {uri} has no best config yet (not finished; "
                         "resume it with rllc tune)")
    return dict(attrs["best"])


def parse_spec(data: Any) -> SweepSpec:
    """Validate a spec mapping; errors become one ``SpecError`` naming the first bad field."""
    if not isinstance(data, dict):
        raise SpecError("spec", f"expected a mapping of sweep fields, got {type(data).__name__}")
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "spec"
        raise SpecError(field, first["msg"].removeprefix("Value error, ")) from None


def load_spec(path: str | Path, parse: Callable[[Any], Any] = parse_spec) -> SweepSpec:
    """Read and validate a YAML or JSON spec file (JSON is YAML) with ``parse`` (a tune
    spec: ``rllc.jobs.tune_spec.parse_tune_spec``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"spec file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError("spec", f"{path} is not valid YAML or JSON ({type(err).__name__})") from None
    return parse(data)
