"""Bytes in and out of local paths or ``s3://bucket/key`` URIs (checkpoints, corpora).

S3 goes through boto3, whose endpoint, credentials and region come from the usual AWS
settings (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, ...). Local writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/part`` → ("bucket", "key/part")."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"malformed S3 URI {uri!r}: expected s3://bucket/prefix")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/' (S3) or the OS separator (local)."""
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


@functools.cache
def _client():
    import boto3

    return boto3.client("s3")


def reset_client() -> None:
    """Forget the cached boto3 client (e.g. after changing AWS_* variables in tests)."""
    _client.cache_clear()


def read_bytes(uri: str) -> bytes:
    """The object's bytes; ``FileNotFoundError`` if it does not exist."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            return _client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except _client().exceptions.NoSuchKey as err:
            raise FileNotFoundError(f"no such object: {uri}") from err
        except _client().exceptions.NoSuchBucket as err:
            raise FileNotFoundError(f"no such bucket in {uri}") from err
    path = Path(uri)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {uri}")
    return path.read_bytes()


def write_bytes(uri: str, data: bytes) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_dirs(uri: str) -> list[str]:
    """Names of the immediate sub-"directories" of ``uri`` (common prefixes on S3)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        names = []
        for page in _client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, Delimiter="/"
        ):
            names += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(names)
    path = Path(uri)
    return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def exists(uri: str) -> bool:
    try:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            _client().head_object(Bucket=bucket, Key=key)
            return True
        return Path(uri).is_file()
    except Exception:
        return False
