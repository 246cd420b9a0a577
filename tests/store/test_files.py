"""rllc.store.files: the one I/O layer, on local paths and on S3 (moto on loopback)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rllc.store import files


def _tree(root: str) -> None:
    """root/{a,b,c}/x, root/top.txt, root/.hidden/x, written through the module."""
    for d in ("a", "b", "c", ".hidden"):
        files.write_bytes(files.join(root, d, "x"), d.encode())
    files.write_bytes(files.join(root, "top.txt"), b"top")


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_bucket") + "/some/prefix"


def test_round_trip_listings_and_glob(root):
    _tree(root)
    assert files.read_bytes(files.join(root, "a", "x")) == b"a"
    files.write_bytes(files.join(root, "a", "x"), b"replaced")
    assert files.read_bytes(files.join(root, "a", "x")) == b"replaced"
    assert files.exists(files.join(root, "top.txt"))
    assert not files.exists(files.join(root, "a"))  # a directory is no file
    assert not files.exists(files.join(root, "nope"))
    assert files.list_dirs(root) == [".hidden", "a", "b", "c"]
    assert files.list_dirs(files.join(root, "a")) == []
    assert files.list_dirs(files.join(root, "missing")) == []
    assert files.list_dirs(files.join(root, "top.txt")) == []
    assert files.glob(files.join(root, "*")) == [
        files.join(root, n) for n in ("a", "b", "c", "top.txt")
    ]
    assert files.glob(files.join(root, "[ab]")) == [files.join(root, "a"), files.join(root, "b")]
    assert files.glob(files.join(root, ".h*")) == [files.join(root, ".hidden")]
    assert files.glob(files.join(root, "top.txt")) == [files.join(root, "top.txt")]
    assert files.glob(files.join(root, "z*")) == []
    assert files.glob(files.join(root, "missing", "*")) == []


def test_missing_is_file_not_found_naming_the_uri(root):
    _tree(root)
    for uri in (files.join(root, "nope"), files.join(root, "a")):
        with pytest.raises(FileNotFoundError, match=f"{re.escape(uri)}$"):
            files.read_bytes(uri)


def test_s3_specifics(s3_bucket):
    bucket = s3_bucket
    assert files.is_s3(bucket) and files.is_remote(bucket)
    assert files.join(bucket + "/", "/a/", "b") == f"{bucket}/a/b"
    files.write_bytes(f"{bucket}/k", b"v")
    assert not files.exists(bucket)  # a bucket is no object
    assert files.list_dirs(bucket) == []
    assert files.glob(f"{bucket}/k*") == [f"{bucket}/k"]
    with pytest.raises(ValueError, match=r"only the last part may be a glob: 's3://b\*/x/y\*'"):
        files.glob("s3://b*/x/y*")
    with pytest.raises(ValueError, match="only the last part"):
        files.glob(f"{bucket}/r*/ckpt-*")
    with pytest.raises(ValueError, match="bucket name cannot be a glob"):
        files.glob("s3://runs-*")
    with pytest.raises(ValueError, match="malformed S3 URI"):
        files.read_bytes("s3://")
    missing = "s3://no-such-bucket-rllc/x"
    with pytest.raises(FileNotFoundError, match=missing):
        files.read_bytes(missing)
    with pytest.raises(FileNotFoundError, match=missing):
        files.write_bytes(missing, b"x")
    assert not files.exists(missing)
    assert files.list_dirs("s3://no-such-bucket-rllc") == []
    fs, path = files.filesystem(f"{bucket}/k")
    assert path == f"{bucket.removeprefix('s3://')}/k" and fs.cat_file(path) == b"v"


def test_options_follow_the_environment(s3_endpoint, monkeypatch):
    assert files.s3_options({}) == {"use_listings_cache": False}
    env = {"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_S3": "http://s3",
           "AWS_DEFAULT_REGION": "eu-west-1"}
    assert files.s3_options(env) == {"use_listings_cache": False, "endpoint_url": "http://s3",
                                     "client_kwargs": {"region_name": "eu-west-1"}}
    assert files.storage_options("s3://b/x")["endpoint_url"] == s3_endpoint
    assert files.storage_options("/tmp/x") is None
    assert files.storage_options("file:///tmp/x") is None
    # A changed endpoint gives another filesystem; reset() forgets the cached ones.
    fs, _ = files.filesystem("s3://b/x")
    assert files.filesystem("s3://b/x")[0] is fs
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert files.filesystem("s3://b/x")[0] is not fs
    monkeypatch.undo()
    files.reset()
    assert files.filesystem("s3://b/x")[0] is not fs


def test_local_specifics(tmp_path):
    target = tmp_path / "deep" / "er" / "f.bin"
    files.write_bytes(f"file://{target}", b"1")  # parents created; file:// accepted
    assert files.read_bytes(str(target)) == b"1" and files.exists(f"file://{target}")
    assert files.join(str(tmp_path), "a", "b") == str(tmp_path / "a" / "b")
    assert files.join("file:///x/", "y") == "file:///x/y"
    assert not files.is_remote(str(target)) and not files.is_remote("file:///x")
    assert files.list_dirs(f"file://{tmp_path}") == ["deep"]
    fs, path = files.filesystem(f"file://{target}")
    assert path == str(target) and fs.cat_file(path) == b"1"
    with pytest.raises(ValueError, match="unsupported URI scheme 'gs'"):
        files.read_bytes("gs://bucket/x")
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        files.exists("http://example.com/x")


def test_local_writes_are_atomic(tmp_path, monkeypatch):
    """A failed write leaves the old file and no temporary behind; a reader never sees a
    partial file (the new one appears by rename)."""
    target = tmp_path / "f.json"
    files.write_bytes(str(target), b"old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        files.write_bytes(str(target), b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "f.json"
    ]
    inode = target.stat().st_ino
    files.write_bytes(str(target), b"new")
    assert target.read_bytes() == b"new" and target.stat().st_ino != inode  # replaced


def test_import_is_light():
    """Importing the module loads neither fsspec/s3fs nor xarray/zarr (nor torch)."""
    code = ("import sys, rllc.store.files; "
            "print(sorted(m for m in ('fsspec', 's3fs', 'xarray', 'zarr', 'torch', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent)
    assert out.stdout.strip() == "[]"
