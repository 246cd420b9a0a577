"""``tune_cpu``: its two process-wide settings take effect, OpenMP workers included. Run in
a child process so the test process keeps torch's defaults."""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, torch
from rllc.kernels.cputune import tune_cpu

torch.set_num_threads(2)
tiny = torch.full((1 << 20,), 1e-39)        # denormal in float32
before = bool((tiny * 1.0).ne(0).all())     # a large op: runs in OpenMP workers
state = tune_cpu()
after_main = bool(torch.tensor([1e-39]).mul(1.0).ne(0).any())
after_workers = bool((tiny * 1.0).ne(0).any())
print(json.dumps({"state": state, "again": tune_cpu(), "before": before,
                  "after_main": after_main, "after_workers": after_workers}))
"""


def test_tune_cpu_flushes_denormals_in_every_thread_and_keeps_freed_memory():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         timeout=120, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["before"], "denormals should survive arithmetic before tuning"
    if sys.platform.startswith("linux"):
        assert res["state"]["retain_freed_memory"]
    if res["state"]["flush_denormals"]:  # x86 with SSE3: yes
        assert not res["after_main"] and not res["after_workers"]
    assert res["again"] == res["state"]  # idempotent
