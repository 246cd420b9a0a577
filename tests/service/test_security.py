"""The service's guards on their own: token digests, roots (local, symlinks, ``..``, S3),
ids, the configuration's sources and messages, and the submission order 422 → 403 → 413.
No Ray here."""

from __future__ import annotations

import os

import pytest

from rllc.service.config import Caps, ConfigError, load_config
from rllc.service.security import Roots, bearer_ok, token_digest, valid_id
from rllc.service.submission import RequestError, parse_body, validate

TOKEN = "a-long-enough-token-0123456789"


def test_bearer_check_takes_only_the_right_token():
    digest = token_digest(TOKEN)
    assert bearer_ok(f"Bearer {TOKEN}", digest)
    assert bearer_ok(f"bearer {TOKEN}", digest)  # the scheme is case-insensitive
    for header in (None, "", "Bearer", "Bearer ", f"Basic {TOKEN}", TOKEN,
                   f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer " + "x" * 10_000):
        assert not bearer_ok(header, digest), header
    assert not bearer_ok("Bearer ", token_digest(""))  # an empty token never passes


def test_roots_hold_paths_under_them_and_nothing_else(tmp_path):
    inside, outside = tmp_path / "root", tmp_path / "other"
    (inside / "runs").mkdir(parents=True)
    outside.mkdir()
    os.symlink(outside, inside / "escape")
    roots = Roots([str(inside), "s3://bucket/rllc"])
    for ok in (inside, inside / "runs" / "ckpt-*", inside / "new" / "store",
               "s3://bucket/rllc", "s3://bucket/rllc/store", "s3://bucket//rllc/x/",
               f"file://{inside}/runs", f"zarr://{inside}/tokens.zarr"):
        assert roots.contains(str(ok)), ok
    for bad in (outside, inside / ".." / "other", inside / "escape" / "ckpt",
                tmp_path / "rootx", "s3://bucket/rllc2", "s3://bucket/rllc/../x",
                "s3://other/rllc", "s3://bucket", "http://host/x", "/etc/passwd", "~"):
        assert not roots.contains(str(bad)), bad


def test_ids_are_names_never_paths():
    assert valid_id("heads-over_training2")
    for bad in ("", "..", "a/b", "../x", "a/../b", ".hidden", "-x", "a b", "a%2Fb"):
        assert not valid_id(bad), bad


def test_config_reads_env_over_file_and_never_shows_the_token(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    file = tmp_path / "serve.yaml"
    file.write_text(f"token_file: {token_file}\nroots: [{tmp_path}]\ncaps: {{max_cells: 7}}\n")
    config = load_config(file, env={})
    assert config.token.get_secret_value() == TOKEN and TOKEN not in repr(config)
    assert config.roots == (str(tmp_path.resolve()),)
    assert config.store == os.path.join(tmp_path.resolve(), "rllc-store")
    assert config.caps.max_cells == 7
    env = {"RLLC_ROOTS": f"{tmp_path}, s3://b/p", "RLLC_MAX_CELLS": "9",
           "RLLC_TOKEN": "x" * 20, "RLLC_STORE": "s3://b/p/store"}
    config = load_config(file, env=env)
    assert config.roots == (str(tmp_path.resolve()), "s3://b/p")
    assert (config.caps.max_cells, config.store) == (9, "s3://b/p/store")
    settings = config.settings()
    assert settings.token_sha256 == token_digest("x" * 20)
    assert "x" * 20 not in settings.model_dump_json()  # only the digest travels
    with pytest.raises(ConfigError, match=r"^token: no bearer token"):
        load_config(env={})
    with pytest.raises(ConfigError, match=r"^token: the token must have at least 16") as err:
        load_config(env={"RLLC_TOKEN": "short-secret"})
    assert "short-secret" not in str(err.value)
    with pytest.raises(ConfigError, match="lies outside the roots"):
        load_config(env={"RLLC_TOKEN": TOKEN, "RLLC_ROOTS": str(tmp_path),
                         "RLLC_STORE": "/elsewhere"})
    with pytest.raises(ConfigError, match="is not an existing directory"):
        load_config(env={"RLLC_TOKEN": TOKEN, "RLLC_ROOTS": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="max_body_bytes"):
        load_config(env={"RLLC_TOKEN": TOKEN, "RLLC_MAX_BODY_BYTES": "10"})


def test_bodies_are_capped_and_parsed_without_aliases():
    caps = Caps(max_body_bytes=2048)
    assert parse_body(b"name: x\n", caps) == {"name": "x"}
    assert parse_body(b'{"name": "x"}', caps) == {"name": "x"}
    for body, status in ((b"x" * 4096, 413), (b"a: &a [1]\nb: *a\n", 422), (b"- 1\n", 422),
                         (b"\xff\xfe", 422), (b"{", 422)):
        with pytest.raises(RequestError) as err:
            parse_body(body, caps)
        assert err.value.status == status, body


def test_validation_comes_before_roots_and_reads_nothing_outside(tmp_path):
    roots, caps = Roots([str(tmp_path)]), Caps()
    store = str(tmp_path / "store")
    spec = {"name": "s", "checkpoints": ["/nowhere/ckpt-1"], "components": ["0:0"]}

    def status(data) -> tuple[int, str]:
        with pytest.raises(RequestError) as err:
            validate(data, roots, caps, store)
        return err.value.status, err.value.detail[0]["field"]

    assert status(spec) == (403, "checkpoints.0")
    assert status(spec | {"sampler": {"step_size": -1}}) == (422, "sampler.step_size")
    assert status(spec | {"components": ["9:x"]}) == (422, "components")
    # a tuned: file outside the roots is refused before it is opened
    inside = {**spec, "checkpoints": [str(tmp_path / "ckpt-1")]}
    assert status(inside | {"sampler": "tuned:/nowhere/best.json"}) == (403, "sampler")
    assert status(inside | {"component_samplers": {"0:*": "tuned:/x.json"}}) == (
        403, "component_samplers.0:*")
    assert status(inside | {"datasets": ["/nowhere/tokens.npy"]}) == (403, "datasets.0")
    assert status(inside | {"store": "/nowhere/store"}) == (403, "store")
    # inside the roots but missing: 422 from the planner
    assert status(inside) == (422, "checkpoints")
