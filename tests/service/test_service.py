"""The HTTP service end to end on real parts: Ray Serve on loopback (``server``), the tiny
trained run, real sweeps into a Zarr store, httpx as the client, the CLI in-process.

Tests share one service and run in file order; the last one reads every log file Ray
wrote during the module and looks for the token.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from rllc.cli.main import app
from rllc.store import open_store

pytestmark = pytest.mark.slow

WRONG = "wrong-token-" + "z" * 20
TOKEN = ""  # the server's (set by ``_names``)
SAMPLER: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _names(server):
    """The token and sampler of ``server`` under the names the tests use."""
    global TOKEN, SAMPLER
    TOKEN, SAMPLER = server.token, server.sampler


def _done(status: dict) -> bool:
    return status["state"] in ("done", "failed", "cancelled")


def _cli(*args: str, env: dict | None = None):
    res = CliRunner().invoke(app, list(args), env=env)
    return res, (json.loads(res.stdout.strip().splitlines()[-1]) if res.exit_code == 0
                 and "--json" in args else None)


# ---- auth, open routes -------------------------------------------------------------------


def test_health_is_open_and_every_other_route_needs_the_token(server):
    import httpx

    bare = httpx.Client(base_url=server.url, timeout=30)
    assert bare.get("/health").json() == {"status": "ok"}
    for method, path in [("GET", "/sweeps"), ("POST", "/sweeps"), ("GET", "/sweeps/x"),
                         ("DELETE", "/sweeps/x"), ("GET", "/sweeps/x/llc"),
                         ("GET", "/tune/x"), ("GET", "/docs"), ("GET", "/openapi.json")]:
        for headers in ({}, {"Authorization": f"Bearer {WRONG}"},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"},
                        {"Authorization": TOKEN}):
            r = bare.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert TOKEN not in r.text and WRONG not in r.text
    with server.client() as c:
        assert c.get("/docs").status_code == 200
        paths = c.get("/openapi.json").json()["paths"]
        assert {"/sweeps", "/sweeps/{sweep_id}", "/sweeps/{sweep_id}/llc",
                "/sweeps/{sweep_id}/traces", "/sweeps/{sweep_id}/failures", "/tune",
                "/tune/{tune_id}", "/health"} <= set(paths)


# ---- a sweep end to end ------------------------------------------------------------------


def test_submit_poll_query_equals_rllc_query(server):
    spec = server.spec("quick")
    with server.client() as c:
        r = c.post("/sweeps", content=yaml.safe_dump(spec),
                   headers={"Content-Type": "application/yaml"})
        assert r.status_code == 201, r.text
        assert r.json()["sweep"] == "quick" and r.json()["state"] in ("queued", "running")
        status = server.wait(c, "quick", _done)
        assert {k: status[k] for k in ("state", "cells_done", "cells_failed", "cells_total",
                                       "eta_seconds")} == {
            "state": "done", "cells_done": 2, "cells_failed": 0, "cells_total": 2,
            "eta_seconds": 0.0}
        http_rows = c.get("/sweeps/quick/llc").json()
        filtered = c.get("/sweeps/quick/llc", params={"component": "0:1", "burnin": "2",
                                                      "estimator": "plain"}).json()
        # the same spec again: the same sweep (200), not a second one; another: 409
        again = c.post("/sweeps", json=spec)
        assert again.status_code == 200 and again.json()["sweep"] == "quick"
        assert again.json()["state"] == "done"
        other = c.post("/sweeps", json=spec | {"seeds": [0, 1]})
        assert other.status_code == 409, other.text
        assert [s["sweep"] for s in c.get("/sweeps").json()["sweeps"]] == ["quick"]
        assert c.get("/sweeps/quick/failures").json() == {"sweep": "quick", "failures": []}
        traces = c.get("/sweeps/quick/traces", params={"component": "0:0"}).json()
        npy = c.get("/sweeps/quick/traces", params={"component": "0:0", "format": "npy"})
    res, cli = _cli("query", server.store, "--sweep", "quick", "--format", "json")
    assert res.exit_code == 0, res.output
    cli = json.loads(res.stdout.strip().splitlines()[-1])
    assert http_rows == cli  # every number and key, as JSON carries them
    assert len(cli["rows"]) == 2 and all(r["seeds"] == 1 for r in cli["rows"])
    res = CliRunner().invoke(app, ["query", server.store, "--sweep", "quick", "--component",
                                   "0:1", "--burnin", "2", "--estimator", "plain", "--json"])
    assert filtered == json.loads(res.stdout.strip().splitlines()[-1])
    # traces: labelled JSON and .npy agree with the store
    ds = open_store(server.store, read_only=True).open_sweep("quick")
    stored = ds["loss"].sel(component=["0:0"]).values
    assert traces["dims"] == ["checkpoint", "component", "dataset", "seed", "chain", "draw"]
    assert traces["coords"]["component"] == ["0:0"]
    np.testing.assert_array_equal(np.array(traces["values"], dtype=float), stored)
    np.testing.assert_array_equal(np.load(__import__("io").BytesIO(npy.content)), stored)


# ---- refusals ------------------------------------------------------------------------------


def test_refusals_401_403_404_409_413_422(server, tmp_path):
    outside = tmp_path / "outside"  # not under the roots
    shutil.copytree(f"{server.run}/ckpt-0000004", outside / "ckpt-0000004")
    with server.client() as c:
        def post(spec, **kw):
            return c.post("/sweeps", json=spec, **kw)

        # 422, with the field path
        r = post(server.spec("bad", sampler=SAMPLER | {"step_size": -1}))
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "sampler", "step_size"]
        r = post(server.spec("bad", colour="red"))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "colour"]
        r = post(server.spec("../etc"))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "name"]
        r = c.post("/sweeps", content=b"a: &x [1]\nb: *x\n")
        assert r.status_code == 422 and "aliases" in r.text
        r = c.post("/sweeps", content=b"[1, 2")
        assert r.status_code == 422
        # 403: checkpoints, store, datasets and tuned files outside the roots
        for spec in (server.spec("out", checkpoints=[str(outside / "ckpt-0000004")]),
                     server.spec("out", store=str(tmp_path / "store")),
                     server.spec("out", datasets=[str(outside / "tokens.npy")]),
                     server.spec("out", sampler=f"tuned:{outside}/best.json"),
                     server.spec("out", checkpoints=["s3://bucket/x/ckpt-0000004"]),
                     server.spec("out", checkpoints=[f"{server.root}/../outside/ckpt-*"])):
            r = post(spec)
            assert r.status_code == 403, (spec, r.text)
        # a symlink under a root that leads out of them
        os.symlink(outside, server.root / "link")
        r = post(server.spec("out", checkpoints=[f"{server.root}/link/ckpt-*"]))
        assert r.status_code == 403, r.text
        # 422 is decided before 403: invalid and outside → 422
        r = post(server.spec("both", checkpoints=[str(outside / "ckpt-0000004")],
                             sampler=SAMPLER | {"step_size": -1}))
        assert r.status_code == 422, r.text
        # a valid spec whose checkpoint does not exist (inside the roots): 422
        r = post(server.spec("missing", checkpoints=[f"{server.root}/nothing"]))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "checkpoints"]
        # 413: a body over the cap (declared, and chunked), a grid over the cap
        r = c.post("/sweeps", content=b"#" * 70_000)
        assert r.status_code == 413, r.text
        r = c.post("/sweeps", content=iter([b"#" * 40_000, b"#" * 40_000]))
        assert r.status_code == 413, r.text
        big = server.spec("big", checkpoints=[f"{server.run}/ckpt-*"], components=["0:*", "1:*"],
                          seeds=[0, 1, 2, 3])  # 3 × 4 × 4 = 48 > 40
        r = post(big)
        assert r.status_code == 413 and "48 cells" in r.text
        # 404: unknown ids
        for method, path in [("GET", "/sweeps/nope"), ("DELETE", "/sweeps/nope"),
                             ("GET", "/sweeps/nope/llc"), ("GET", "/sweeps/nope/traces"),
                             ("GET", "/sweeps/nope/failures"), ("POST", "/sweeps/nope/resume"),
                             ("GET", "/tune/nope")]:
            assert c.request(method, path).status_code == 404, (method, path)
        # tune specs are checked the same way
        r = c.post("/tune", json=server.spec("t", search={"trials": 0}))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "search"]
        r = c.post("/tune", json=server.spec("t", store=str(tmp_path / "s"), search={}))
        assert r.status_code == 403
        # none of these reached the store
        assert [s["sweep"] for s in c.get("/sweeps").json()["sweeps"]] == ["quick"]


@pytest.mark.parametrize("path", ["/sweeps/..%2F..%2Fetc%2Fpasswd", "/sweeps/a/../b",
                                  "/sweeps/..", "/sweeps/%2e%2e/llc",
                                  "/sweeps/..%2F..%2Fetc%2Fpasswd/llc",
                                  "/sweeps/a%2F..%2F..%2Fsweeps/traces"])
def test_traversal_in_an_id_is_refused_without_reading_files(server, path):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", path, headers=server.auth)  # sent as written: no normalization
    resp = conn.getresponse()
    body = resp.read().decode()
    assert resp.status in (404, 422), (path, resp.status, body)
    assert "root:" not in body  # no file was read


# ---- cancel mid-run and resume; the load test -----------------------------------------------


def _load(server, sweep: str, clients: int = 8, total: int = 200) -> list[float]:
    """``total`` status and query requests from ``clients`` threads; latencies in s."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        with httpx.Client(base_url=server.url, headers=server.auth, timeout=60) as c:
            for i in range(n):
                path = f"/sweeps/{sweep}" if i % 2 == 0 else f"/sweeps/{sweep}/llc"
                start = time.perf_counter()
                try:
                    r = c.get(path)
                    ok = r.status_code == 200
                    err = f"{path}: {r.status_code} {r.text[:200]}"
                except httpx.HTTPError as e:
                    ok, err = False, f"{path}: {type(e).__name__}"
                with lock:
                    latencies.append(time.perf_counter() - start)
                    if not ok:
                        errors.append(err)

    threads = [threading.Thread(target=work, args=(total // clients,)) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert len(latencies) == total
    return latencies


def test_cancel_keeps_finished_cells_and_resume_finishes(server):
    spec = server.spec("long", checkpoints=[f"{server.run}/ckpt-*"], seeds=[0, 1],
                       sampler=SAMPLER | {"draws": 40}, compute={"batch_heads": False})
    total = 3 * 2 * 2
    with server.client() as c:
        assert c.post("/sweeps", json=spec).status_code == 201
        server.wait(c, "long", lambda s: s["cells_done"] >= 1)
        r = c.delete("/sweeps/long")
        assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
        kept = r.json()["cells_done"]
        assert 1 <= kept < total
        time.sleep(2.0)  # the workers are gone: nothing more is written
        status = c.get("/sweeps/long").json()
        assert (status["state"], status["cells_done"]) == ("cancelled", kept)
        assert len(c.get("/sweeps/long/llc").json()["rows"]) >= 1  # finished cells stay
        # resubmitting the same spec returns it as it is; resume continues it
        again = c.post("/sweeps", json=spec)
        assert again.status_code == 200 and again.json()["state"] == "cancelled"
        assert c.delete("/sweeps/long").json()["state"] == "cancelled"  # idempotent
        assert c.post("/sweeps/long/resume").json()["state"] in ("queued", "running")
        status = server.wait(c, "long", _done)
    assert (status["state"], status["cells_done"], status["cells_failed"]) == ("done", total, 0)
    record = _record(server, "long")
    assert len(record["runs"]) == 2 and record["runs"][0]["stopped"]
    assert record["runs"][1]["cells_skipped"] == kept
    assert record["runs"][1]["cells_run"] == total - kept


def _record(server, sweep: str) -> dict:
    from rllc.service.registry import Job, Registry

    return Registry(server.store).get(Job.SWEEP, sweep)


# ---- the load test; a restart mid-sweep ---------------------------------------------------


def test_load_of_200_requests_while_a_sweep_runs(server, capsys):
    # 3 checkpoints × 4 heads × 3 seeds = 36 cells on one worker: it outlasts the load
    spec = server.spec("load", checkpoints=[f"{server.run}/ckpt-*"], components=["0:*", "1:*"],
                       seeds=[0, 1, 2], sampler=SAMPLER | {"draws": 100},
                       compute={"batch_heads": False})
    with server.client() as c:
        assert c.post("/sweeps", json=spec).status_code == 201
        before = server.wait(c, "load", lambda s: s["cells_done"] >= 1)
        start = time.perf_counter()
        lat = _load(server, "load")
        seconds = time.perf_counter() - start
        after = c.get("/sweeps/load").json()
        assert after["state"] == "running", "the sweep ended before the load test did"
        assert c.delete("/sweeps/load").json()["state"] == "cancelled"
    p50, p99 = np.percentile(lat, [50, 99])
    with capsys.disabled():
        print(f"\nload test: 200 requests (GET status + GET llc) from 8 clients in "
              f"{seconds:.1f} s while a sweep ran ({before['cells_done']} → "
              f"{after['cells_done']} of 36 cells): 0 errors, p50 {1000 * p50:.0f} ms, "
              f"p99 {1000 * p99:.0f} ms, max {1000 * max(lat):.0f} ms")


def test_restart_mid_sweep_completes_without_losing_or_redoing_cells(server):
    spec = server.spec("restart", checkpoints=[f"{server.run}/ckpt-*"], seeds=[0, 1],
                       sampler=SAMPLER | {"draws": 40}, compute={"batch_heads": False})
    total = 12
    frozen = {}

    def while_down() -> None:
        # the replica is gone, and with it the runner and its workers: once the last
        # in-flight write has landed, nothing changes any more
        last, stable_since = None, time.monotonic()
        while time.monotonic() - stable_since < 2.0:
            now = store.sweep_progress("restart")["cells_done"]
            if now != last:
                last, stable_since = now, time.monotonic()
            time.sleep(0.2)
        frozen["done"] = last
        frozen["cells"] = store.done_cells("restart")
        assert _record(server, "restart")["state"] == "running"  # as the service left it

    with server.client() as c:
        assert c.post("/sweeps", json=spec).status_code == 201
        store = open_store(server.store, read_only=True)
        listed = [s["sweep"] for s in c.get("/sweeps").json()["sweeps"]]
        server.wait(c, "restart", lambda s: s["cells_done"] >= 1)
        server.restart(between=while_down)
        assert 1 <= frozen["done"] < total, frozen
        status = server.wait(c, "restart", _done)
        assert [s["sweep"] for s in c.get("/sweeps").json()["sweeps"]] == listed
    assert (status["state"], status["cells_done"], status["cells_failed"]) == ("done", total, 0)
    assert store.failed_cells("restart") == {}
    assert frozen["cells"] <= store.done_cells("restart")
    # the continued run skipped exactly the cells done before the restart and ran each
    # other cell once: cells written = done before + run after = the grid
    (run,) = _record(server, "restart")["runs"]  # the killed run never reported
    assert run["cells_skipped"] == frozen["done"]
    assert run["cells_run"] == total - frozen["done"]


# ---- the CLI, against the server and without one ------------------------------------------


def test_cli_client_against_the_server_and_locally(server, tmp_path, no_server_env):
    remote = server.spec("cli-remote")
    path = tmp_path / "remote.yaml"
    path.write_text(yaml.safe_dump(remote))
    res, out = _cli("submit", str(path), "--server", server.url, "--json")
    assert res.exit_code == 0, res.output
    assert out["sweep"] == "cli-remote" and out["state"] in ("queued", "running")
    deadline = time.monotonic() + 120
    while out["state"] != "done":
        assert time.monotonic() < deadline, out
        time.sleep(0.5)
        res, out = _cli("status", "cli-remote", "--json", env={"RLLC_SERVER": server.url})
        assert res.exit_code == 0, res.output
    assert {k: out[k] for k in ("cells_done", "cells_failed", "cells_total")} == {
        "cells_done": 2, "cells_failed": 0, "cells_total": 2}
    res, remote_q = _cli("query", "--server", server.url, "--sweep", "cli-remote", "--json")
    assert res.exit_code == 0, res.output
    _, local_q = _cli("query", server.store, "--sweep", "cli-remote", "--json")
    assert remote_q == local_q
    res, out = _cli("cancel", "cli-remote", "--server", server.url, "--json")
    assert res.exit_code == 0 and out["state"] == "done"  # finished: nothing to cancel
    # cancel a running one through the CLI
    path.write_text(yaml.safe_dump(remote | {"name": "cli-cancel", "seeds": [0, 1, 2]}))
    assert _cli("submit", str(path), "--server", server.url)[0].exit_code == 0
    res, out = _cli("cancel", "cli-cancel", "--server", server.url, "--json")
    assert res.exit_code == 0 and out["state"] in ("cancelled", "done"), res.output
    # refusals: bad input exits 2 with one line, never the token
    res, _ = _cli("status", "nope", "--server", server.url)
    assert res.exit_code == 2 and "404" in res.stderr, res.stderr
    # one line of ours (Ray's log monitor may print workers' lines to this stderr too)
    assert [x for x in res.stderr.splitlines() if x.startswith("error:")] == [
        "error: server refused (404): no sweep 'nope'"], res.stderr
    assert "Traceback" not in res.stderr
    res, _ = _cli("status", "cli-remote", "--server", server.url, env={"RLLC_TOKEN": WRONG})
    assert res.exit_code == 2 and "401" in res.stderr and WRONG not in res.output
    # locally: submit runs in the foreground (this process's Ray), status reads the store
    local = server.spec("cli-local") | {"store": str(tmp_path / "store")}
    path.write_text(yaml.safe_dump(local))
    res, out = _cli("submit", str(path), "--json")
    assert res.exit_code == 0, res.output
    assert (out["sweep"], out["state"], out["cells_done"], out["cells_total"]) == (
        "cli-local", "done", 2, 2)
    res, out = _cli("status", "cli-local", "--store", str(tmp_path / "store"), "--json")
    assert res.exit_code == 0 and out["state"] == "done" and out["cells_done"] == 2
    res, out = _cli("cancel", "cli-local", "--store", str(tmp_path / "store"), "--json")
    assert res.exit_code == 0 and out["state"] == "done"
    res, _ = _cli("status", "nope", "--store", str(tmp_path / "store"))
    assert res.exit_code == 2 and "nope" in res.stderr
    # status of a service-run sweep read from its store: the service's state
    res, out = _cli("status", "long", "--store", server.store, "--json")
    assert res.exit_code == 0 and out["state"] == "done"


# ---- last: the token never reached a log ----------------------------------------------------


def test_token_never_appears_in_the_logs(server):
    # one more of each kind of request with the right and a wrong token, then read every
    # file Ray wrote (its session logs: the replica's, the proxy's, the runners' and
    # workers'), and the service's store
    import httpx

    with server.client() as c:
        c.get("/sweeps/quick")
        c.post("/sweeps", json=server.spec("quick") | {"sampler": SAMPLER | {"step_size": -1}})
    httpx.get(f"{server.url}/sweeps", headers={"Authorization": f"Bearer {WRONG}"})
    time.sleep(1.0)  # let the log monitors flush
    hits, files = [], 0
    for folder in (server.ray_dir, str(server.root)):
        for dirpath, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(dirpath, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                files += 1
                if TOKEN.encode() in data or WRONG.encode() in data:
                    hits.append(path)
    assert files > 20  # the logs were there to read
    replica_logs = [n for _, _, ns in os.walk(server.ray_dir) for n in ns
                    if "replica" in n and n.endswith(".log")]
    assert replica_logs
    assert not hits, hits
