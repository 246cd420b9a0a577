"""The service's configuration: token, roots, store and caps, from the environment or a file.

    config = load_config()                 # RLLC_TOKEN, RLLC_ROOTS, … over RLLC_CONFIG's file
    settings = config.settings()           # what the Serve replica gets: no token in it

The operator's settings (``ServiceConfig``) hold the bearer token as a ``SecretStr``; the
replica receives ``ServiceSettings``, which carry only the token's SHA-256, so the token
itself never travels through Ray (its object store, its logs or the Serve controller's
checkpoints). Sources, the first that sets a field winning:

1. environment: ``RLLC_TOKEN``, ``RLLC_ROOTS`` (paths and ``s3://bucket/prefix``,
   separated by ``,``), ``RLLC_STORE``, ``RLLC_MAX_BODY_BYTES``, ``RLLC_MAX_CELLS``;
2. the YAML file named by ``path`` or ``RLLC_CONFIG``: the fields of ``ServiceConfig``
   (``token_file`` instead of ``token`` keeps the token out of the config file);
3. defaults: the only root is the working directory; the store is ``<first root>/rllc-store``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .security import Roots, normalize_root, token_digest

#: Shortest token accepted: a bearer token is the service's only credential.
MIN_TOKEN_CHARS = 16
ENV = {
    "token": "RLLC_TOKEN",
    "roots": "RLLC_ROOTS",
    "store": "RLLC_STORE",
    "max_body_bytes": "RLLC_MAX_BODY_BYTES",
    "max_cells": "RLLC_MAX_CELLS",
}
CONFIG_ENV = "RLLC_CONFIG"


class ConfigError(ValueError):
    """The service's configuration is unusable; the message names the field."""


class Caps(BaseModel):
    """Limits that keep one request from tying up the service or the cluster."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_body_bytes: int = Field(
        1_000_000, ge=1024, description="Largest request body (a spec): 413 above it."
    )
    max_cells: int = Field(
        10_000, ge=1, description="Largest grid of a submitted sweep (cells): 413 above it."
    )
    max_trace_values: int = Field(
        20_000_000, ge=1,
        description="Most numbers one GET /sweeps/{id}/traces answer may hold: 413 above it.",
    )


class ServiceSettings(BaseModel):
    """What the Serve replica is given: roots, store and caps, and the token's digest only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token_sha256: str = Field(description="Hex SHA-256 of the bearer token.")
    roots: tuple[str, ...] = Field(min_length=1, description="Normalized roots.")
    store: str = Field(description="The service's store: its registry, and specs' default.")
    caps: Caps = Field(default_factory=Caps)
    open_docs: bool = Field(False, description="Serve /docs and /openapi.json without a token.")

    @property
    def root_set(self) -> Roots:
        return Roots(self.roots)


class ServiceConfig(BaseModel):
    """The operator's configuration of ``rllc serve`` (module docstring for the sources)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token: SecretStr = Field(description="Bearer token every route but /health requires.")
    roots: tuple[str, ...] = Field(
        default_factory=lambda: (os.getcwd(),),
        description="Directories and s3://bucket/prefix under which every checkpoint, "
        "dataset and store named in a request must lie.",
    )
    store: str | None = Field(
        None, description="The service's store (default <first root>/rllc-store)."
    )
    caps: Caps = Field(default_factory=Caps)
    open_docs: bool = Field(
        False, description="Serve the OpenAPI page without a token (it documents the API, "
        "it holds no data)."
    )

    @field_validator("token")
    @classmethod
    def _token(cls, v: SecretStr) -> SecretStr:
        text = v.get_secret_value()
        if len(text) < MIN_TOKEN_CHARS or text != text.strip():
            raise ValueError(
                f"the token must have at least {MIN_TOKEN_CHARS} characters and no "
                "surrounding spaces (e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`)"
            )
        return v

    @field_validator("roots", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [r for r in (part.strip() for part in v.split(",")) if r]
        return v

    @field_validator("roots")
    @classmethod
    def _roots(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one root is needed")
        return tuple(dict.fromkeys(normalize_root(r) for r in v))

    @model_validator(mode="after")
    def _store(self) -> ServiceConfig:
        roots = Roots(self.roots)
        store = self.store or _default_store(self.roots)
        if not roots.contains(store):
            raise ValueError(f"store {store!r} lies outside the roots {list(self.roots)}")
        object.__setattr__(self, "store", roots.normalize(store))
        return self

    def settings(self) -> ServiceSettings:
        """The replica's settings: the token replaced by its digest."""
        return ServiceSettings(
            token_sha256=token_digest(self.token.get_secret_value()),
            roots=self.roots,
            store=str(self.store),
            caps=self.caps,
            open_docs=self.open_docs,
        )


def _default_store(roots: tuple[str, ...]) -> str:
    local = [r for r in roots if "://" not in r]
    first = local[0] if local else roots[0]
    return os.path.join(first, "rllc-store") if "://" not in first else f"{first}/rllc-store"


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None
                ) -> ServiceConfig:
    """The configuration from ``env`` (default ``os.environ``) over the YAML file at
    ``path`` (default ``$RLLC_CONFIG``); ``ConfigError`` naming the field if it is
    unusable. The token is never part of an error message."""
    env = os.environ if env is None else env
    path = path or env.get(CONFIG_ENV)
    data: dict[str, Any] = {}
    if path:
        data = _read_file(Path(path))
    caps = dict(data.pop("caps", None) or {})
    for field, name in ENV.items():
        value = env.get(name)
        if value is None or value == "":
            continue
        if field in Caps.model_fields:
            caps[field] = value
        else:
            data[field] = value
    if caps:
        data["caps"] = caps
    if "token" not in data:
        raise ConfigError(
            f"token: no bearer token: set {ENV['token']} (or token_file in the {CONFIG_ENV} "
            "file); every route but /health requires it"
        )
    try:
        return ServiceConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "config"
        # pydantic messages quote inputs only for type errors; never show the token's
        raise ConfigError(f"{field}: {first['msg'].removeprefix('Value error, ')}") from None


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config: no such file: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise ConfigError(f"config: {path} is not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping of settings")
    token_file = data.pop("token_file", None)
    if token_file is not None:
        if "token" in data:
            raise ConfigError("token_file: give token or token_file, not both")
        try:
            data["token"] = Path(str(token_file)).expanduser().read_text().strip()
        except OSError:
            raise ConfigError(f"token_file: cannot read {token_file}") from None
    return data
