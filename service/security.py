"""The service's three guards: the bearer token, the roots, and ids.

- **Token**: the replica holds only the token's SHA-256; a request's token is hashed and
  the digests compared with ``hmac.compare_digest`` (constant time, and equal-length
  inputs whatever the caller sends). Nothing here logs or returns a presented token.
- **Roots**: every checkpoint, dataset, tuned-sampler file and store a request names must
  lie under a configured root: a local directory (compared after ``realpath``, so ``..``
  and symlinks cannot leave it) or ``s3://bucket/prefix`` (compared by whole key
  segments; ``.`` and ``..`` segments are refused). Anything else is outside.
- **Ids** (sweeps, tunes) are ``rllc.store.layout.validate_id``'s: letters, digits, ``-``
  and ``_``, so an id can never name a path.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable

from rllc.store.layout import validate_id

__all__ = [
    "OutsideRootsError",
    "Roots",
    "bearer_ok",
    "normalize_root",
    "token_digest",
    "valid_id",
]

_PREFIXES = ("file://", "zarr://")


class OutsideRootsError(PermissionError):
    """A request names a path outside the configured roots (HTTP 403)."""

    def __init__(self, field: str, uri: str) -> None:
        super().__init__(f"{field}: {uri!r} lies outside the roots this server may use")
        self.field, self.uri = field, uri


def token_digest(token: str) -> str:
    """Hex SHA-256 of a token: what the replica keeps instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_ok(authorization: str | None, digest: str) -> bool:
    """Whether an ``Authorization`` header carries the token whose digest is ``digest``.

    The presented token is hashed first, so the comparison always runs over two 64-byte
    digests in constant time, whatever the header holds."""
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        presented = ""
    candidate = token_digest(presented.strip())
    return hmac.compare_digest(candidate.encode(), digest.encode()) and bool(presented)


def valid_id(text: str, what: str = "sweep id") -> bool:
    """Whether ``text`` is a well-formed id (no path can be one)."""
    try:
        validate_id(text, what)
    except ValueError:
        return False
    return True


def _s3_parts(uri: str) -> list[str]:
    parts = uri.removeprefix("s3://").split("/")
    parts = [p for p in parts if p != ""]
    if not parts:
        raise ValueError(f"malformed S3 URI {uri!r}: expected s3://bucket/prefix")
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"S3 URI {uri!r} has '.' or '..' segments")
    return parts


def normalize(uri: str) -> str:
    """``uri`` in the form roots are compared in: ``s3://bucket/key`` without trailing or
    doubled slashes, or an absolute local path with symlinks and ``..`` resolved.
    ``ValueError`` for other schemes and malformed S3 URIs."""
    for prefix in _PREFIXES:
        uri = uri.removeprefix(prefix)
    if uri.startswith("s3://"):
        return "s3://" + "/".join(_s3_parts(uri))
    if "://" in uri:
        raise ValueError(f"unsupported URI scheme in {uri!r}")
    # as the sweep planner reads them (rllc.jobs.sweep_plan.absolute): ~ expanded
    return os.path.realpath(os.path.abspath(os.path.expanduser(uri)))


def normalize_root(root: str) -> str:
    """A configured root, normalized; a local root must be an existing directory."""
    try:
        out = normalize(root)
    except ValueError as err:
        raise ValueError(f"root {root!r}: {err}") from None
    if "://" not in out and not os.path.isdir(out):
        raise ValueError(f"root {root!r} is not an existing directory")
    return out


class Roots:
    """The roots a request's paths must lie under (normalized with ``normalize``)."""

    def __init__(self, roots: Iterable[str]) -> None:
        self.roots = tuple(normalize(r) for r in roots)

    def __repr__(self) -> str:
        return f"Roots({list(self.roots)!r})"

    @staticmethod
    def normalize(uri: str) -> str:
        return normalize(uri)

    def contains(self, uri: str) -> bool:
        """Whether ``uri`` (a path, possibly with glob characters, or an S3 URI) lies
        under a root; False for anything that cannot be normalized."""
        try:
            path = normalize(uri)
        except ValueError:
            return False
        for root in self.roots:
            if root.startswith("s3://"):
                if path == root or path.startswith(root.rstrip("/") + "/"):
                    return True
            elif "://" not in path and os.path.commonpath([root, path]) == root:
                return True
        return False

    def check(self, field: str, uri: str) -> None:
        """``OutsideRootsError`` naming ``field`` unless ``uri`` lies under a root."""
        if not self.contains(uri):
            raise OutsideRootsError(field, uri)
