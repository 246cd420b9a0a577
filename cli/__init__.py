"""rllc.cli

Imported before any command module: OpenMP's wait policy goes into the environment here,
before torch (and its OpenMP runtime) loads (``rllc.kernels.threads``)."""

from rllc.kernels.threads import set_wait_policy

set_wait_policy()
