"""A hand-written CPU kernel for the fused cross-entropies' vocabulary-wide passes
(``csrc/softmax_rows.cpp``), built on first use with ``torch.utils.cpp_extension``.

For logit rows i (tokens × SGLD rows) and a vocabulary of V it returns, in one pass per row
that keeps the row in a core's cache,

    lowrank:  X_iv = a_tv + xd_iv − μ_i·u_v + σ_i·c_v,   logits_iv = X_iv / σ_i
    dense:    X_iv = xd_iv + c_v,                       logits_iv = X_iv

    lse_i = logsumexp_v logits_iv,   mean_i = Σ_v softmax_iv·X_iv,
    e_iv = exp(logits_iv − max_v logits_iv) (xd's dtype),   s_i = Σ_v e_iv

so softmax = e/s, with the 1/s left to the caller (it scales the small matmul products
instead of the [rows, V] block). Inductor compiles the same math to a kernel that writes X
out and streams it from memory once per reduction: 1.0–1.2 ns per element on the
development CPU against 0.36 ns here (32 rows × 256 tokens × V = 5000, bf16).

The build (≈ 30 s once per machine, Python, torch version and CPU capability, cached
under torch's extensions directory, ``TORCH_EXTENSIONS_DIR``) needs a C++ compiler and
ninja (a dependency). Where it fails, ``available()`` is False after one warning and
callers keep their ``torch.compile`` kernels; ``RLLC_CPU_KERNELS=0`` chooses those without
trying.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("csrc") / "softmax_rows.cpp"

#: Compiler flags per ``torch.backends.cpu.get_cpu_capability()``, as inductor builds its
#: CPU kernels: the ISA of at::vec's Vectorized<float>, without tying the build to the
#: exact CPU (``-march=native``), since a shared home may serve several machines.
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
}


def _ninja_on_path() -> None:
    """cpp_extension looks ninja up on PATH; the pip package's binary is not on it unless
    the virtual environment is activated."""
    try:
        import ninja
    except ImportError:
        return
    bin_dir = getattr(ninja, "BIN_DIR", None)
    if bin_dir and bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


@functools.cache
def _module() -> ModuleType | None:
    if os.environ.get("RLLC_CPU_KERNELS", "1") == "0":
        return None
    from torch.utils.cpp_extension import get_default_build_root, load

    cap = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-fopenmp"]
    if cap in _ISA_FLAGS:
        flags += [*_ISA_FLAGS[cap], f"-DCPU_CAPABILITY={cap}", f"-DCPU_CAPABILITY_{cap}"]
    name = f"rllc_softmax_rows_{cap.lower()}"
    # the binary depends on Python, torch and the ISA: one build directory for each
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    build = root / f"{name}_{py}_torch{torch.__version__}"
    _ninja_on_path()
    try:
        build.mkdir(parents=True, exist_ok=True)
        if not (build / f"{name}.so").exists():
            print(f"rllc: building the CPU softmax kernel in {build} (once, ≈ 30 s)",
                  file=sys.stderr, flush=True)
        return load(name, [str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                    build_directory=str(build), verbose=False)
    except Exception as err:  # no compiler or ninja, or a build error: keep the fallback
        warnings.warn(f"rllc's CPU softmax kernel could not be built ({err}); "
                      "using the torch.compile kernels instead", RuntimeWarning, stacklevel=3)
        return None


def available() -> bool:
    """Whether the kernel is built (building it on first call)."""
    return _module() is not None


def usable(*tensors: Tensor) -> bool:
    """Whether ``softmax_rows`` serves these tensors: on the CPU, float32 or bfloat16 only,
    and the kernel builds."""
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16)
               for t in tensors) and available()


def softmax_rows(
    xd: Tensor,
    *,
    a: Tensor | None = None,
    mu: Tensor | None = None,
    sigma: Tensor | None = None,
    u: Tensor | None = None,
    c: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(lse [rows], mean [rows], s [rows], e [rows, V]) of the rows of ``xd`` [rows, V]
    (float32 or bfloat16) as in the module docstring. The lowrank form takes ``a`` [C, V]
    (row i reads a[i mod C]), ``mu``, ``sigma`` [rows], ``u`` and ``c`` [V]; the dense form
    only ``c`` (a bias, or None). All float32 but ``xd``."""
    mod = _module()
    if mod is None:
        raise RuntimeError("the CPU softmax kernel is not available (see available())")
    empty = xd.new_empty(0, dtype=torch.float32)

    def f32(t: Tensor | None) -> Tensor:
        return empty if t is None else t.detach().contiguous()

    lse, mean, s, e = mod.softmax_rows(xd.detach().contiguous(), f32(a), f32(mu), f32(sigma),
                                       f32(u), f32(c))
    return lse, mean, s, e
