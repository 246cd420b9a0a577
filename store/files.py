"""Bytes at local paths or ``s3://bucket/key`` URIs: checkpoints, corpora, run files.

The one I/O layer of rllc (the Zarr trace store opens S3 with the same options,
``storage_options``). A URI is

- a local path, optionally written ``file://PATH``;
- ``s3://bucket/key``, through fsspec's ``s3fs``. The endpoint comes from
  ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, the region from ``AWS_REGION`` or
  ``AWS_DEFAULT_REGION`` when set; credentials are left to botocore's usual chain
  (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles…).

Other schemes are refused (``ValueError``). A missing file or object is a
``FileNotFoundError`` naming the URI. Local writes are atomic (temporary file in the same
directory, then rename); S3 writes are atomic by nature (one PUT).

s3fs caches its filesystem instances (per process) by their options: a change of endpoint
or region takes effect by itself, but credentials are read when an instance is created, so
after changing AWS settings in-process (tests: the ``s3_endpoint`` fixture does) call
``reset()``.

Importing this module costs nothing beyond the standard library: fsspec and s3fs load on
the first S3 access.
"""

from __future__ import annotations

import glob as _glob
import os
import tempfile
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = [
    "GLOB_CHARS",
    "exists",
    "filesystem",
    "glob",
    "is_remote",
    "is_s3",
    "join",
    "list_dirs",
    "local_path",
    "read_bytes",
    "reset",
    "s3_options",
    "storage_options",
    "write_bytes",
]

#: characters that make a path part a glob pattern
GLOB_CHARS = "*?["


def is_s3(uri: str) -> bool:
    """Whether ``uri`` is an ``s3://`` URI."""
    return uri.startswith("s3://")


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names something off this machine (any scheme but ``file://``)."""
    return "://" in uri and not uri.startswith("file://")


def _check(uri: str) -> None:
    if is_remote(uri) and not is_s3(uri):
        scheme = uri.split("://", 1)[0]
        raise ValueError(
            f"unsupported URI scheme {scheme!r} in {uri!r}: use a local path or s3://bucket/key"
        )


def local_path(uri: str) -> str:
    """The local path of a local URI (``file://`` removed); ``ValueError`` for others."""
    _check(uri)
    if is_s3(uri):
        raise ValueError(f"{uri!r} is not a local path")
    return uri.removeprefix("file://")


def _s3_path(uri: str) -> str:
    """``s3://bucket/key/`` → ``bucket/key`` (s3fs' form); ``ValueError`` without a bucket."""
    path = uri.removeprefix("s3://").strip("/")
    if not path:
        raise ValueError(f"malformed S3 URI {uri!r}: expected s3://bucket/key")
    return path


def join(base: str, *parts: str) -> str:
    """Join URI parts: with ``/`` for a URI with a scheme, the OS separator for a path."""
    if "://" in base:
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


# -- S3 settings --------------------------------------------------------------------------


def s3_options(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """s3fs options from the AWS environment variables ``env`` (default ``os.environ``):
    the endpoint and region when set, and no listing cache (another process may add a
    checkpoint or a sweep at any time). Credentials are not among them: botocore's chain
    finds them."""
    env = os.environ if env is None else env
    opts: dict[str, Any] = {"use_listings_cache": False}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        opts["client_kwargs"] = {"region_name": region}
    return opts


def storage_options(uri: str) -> dict[str, Any] | None:
    """fsspec ``storage_options`` for opening ``uri`` elsewhere (``zarr.open_array``,
    ``zarr.storage.FsspecStore.from_url``, ``xarray.open_zarr``): ``s3_options()`` for S3,
    ``None`` for a local path (zarr refuses options there, even ``{}``)."""
    _check(uri)
    return s3_options() if is_s3(uri) else None


def filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of ``uri`` and the path on it (``bucket/key`` on S3)."""
    _check(uri)
    if is_s3(uri):
        import fsspec

        return fsspec.filesystem("s3", **s3_options()), _s3_path(uri)
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem(), os.path.abspath(local_path(uri))


def reset() -> None:
    """Forget s3fs' cached filesystem instances, so that new ones read the AWS settings
    (credentials included) afresh. Cheap; a no-op when S3 was never used.

    Connected asynchronous instances (zarr opens its S3 stores with them) stay: their
    connections belong to zarr's event loop, which alone could close them, and a store
    opened before may still be in use. They follow endpoint and region changes (part of
    their options), not credential changes."""
    import sys

    s3fs = sys.modules.get("s3fs")
    if s3fs is None:
        return
    cache = s3fs.S3FileSystem._cache
    for token, fs in list(cache.items()):
        if not (fs.asynchronous and getattr(fs, "_s3", None) is not None):
            cache.pop(token, None)


# -- bytes --------------------------------------------------------------------------------


def read_bytes(uri: str) -> bytes:
    """The bytes of the file or object ``uri``; ``FileNotFoundError`` if there is none."""
    if is_s3(uri):
        fs, path = filesystem(uri)
        try:
            return fs.cat_file(path)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"no such object: {uri}") from err
    path = Path(local_path(uri))
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {uri}")
    return path.read_bytes()


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri``, replacing it; local parent directories are created and
    the write is atomic (a temporary file in the same directory, then a rename)."""
    if is_s3(uri):
        fs, path = filesystem(uri)
        try:
            fs.pipe_file(path, data)
        except FileNotFoundError as err:  # no such bucket
            raise FileNotFoundError(f"cannot write {uri}: {err}") from err
        return
    path = Path(local_path(uri))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def exists(uri: str) -> bool:
    """Whether the file or object ``uri`` exists (a directory or bare prefix does not
    count). Errors other than "not found" (no access, no connection) propagate."""
    if is_s3(uri):
        fs, path = filesystem(uri)
        if "/" not in path:  # a bucket is not an object
            return False
        try:
            return fs.info(path)["type"] == "file"
        except FileNotFoundError:
            return False
    return Path(local_path(uri)).is_file()


# -- listings -----------------------------------------------------------------------------


def _entries(uri: str) -> list[tuple[str, bool]]:
    """``(name, is_dir)`` of the immediate entries of directory ``uri``; none if missing."""
    if is_s3(uri):
        fs, path = filesystem(uri)
        try:
            listing = fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        base = path + "/"
        return [
            (e["name"].rstrip("/")[len(base):], e["type"] == "directory")
            for e in listing
            if e["name"].startswith(base) and e["name"].rstrip("/") != path
        ]
    path = Path(local_path(uri))
    if not path.is_dir():
        return []
    return [(p.name, p.is_dir()) for p in path.iterdir()]


def list_dirs(uri: str) -> list[str]:
    """Sorted names of the immediate sub-directories of ``uri`` (common prefixes on S3);
    ``[]`` if ``uri`` is no directory."""
    return sorted(name for name, is_dir in _entries(uri) if is_dir)


def glob(pattern: str) -> list[str]:
    """Sorted URIs matching ``pattern`` (files and directories). Local patterns are
    Python's ``glob``; in an ``s3://`` pattern only the last part may hold glob characters
    (``*?[``), matched against the entries under the rest (``ValueError`` otherwise).
    As with ``glob``, ``*`` does not match names that start with a dot."""
    if not is_s3(pattern):
        return sorted(_glob.glob(local_path(pattern)))
    base, _, last = pattern.rstrip("/").rpartition("/")
    if base == "s3:/":
        raise ValueError(f"a bucket name cannot be a glob: {pattern!r}")
    if any(c in base for c in GLOB_CHARS):
        raise ValueError(f"in an s3:// URI only the last part may be a glob: {pattern!r}")
    hidden_ok = last.startswith(".")
    return sorted(
        join(base, name)
        for name, _ in _entries(base)
        if fnmatchcase(name, last) and (hidden_ok or not name.startswith("."))
    )
