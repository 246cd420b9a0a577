import json
import subprocess
import sys

RLLC = [sys.executable, "-m", "rllc.cli.main"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RLLC, *args], capture_output=True, text=True, timeout=300)


def test_estimate_dln_json_is_the_last_line():
    proc = run("estimate", "dln", "--widths", "4,3,8", "--true-rank", "1",
               "--draws", "60", "--burnin", "10", "--chains", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("llc_mean", "llc_std", "llc_stderr", "true_llc", "chains", "draws",
                "diverged_chains", "seconds"):
        assert key in out
    assert out["true_llc"] == 8.5 and out["chains"] == 4 and out["draws"] == 50


def test_bad_input_exits_2_with_one_line():
    for args in (["--step-size", "-1"], ["--true-rank", "9"], ["--widths", "4,x"]):
        base = {"--widths": "4,3,8", "--true-rank": "1"}
        base.update(dict(zip(args[::2], args[1::2], strict=True)))
        flat = [t for kv in base.items() for t in kv]
        proc = run("estimate", "dln", *flat)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
        assert "Traceback" not in proc.stderr
