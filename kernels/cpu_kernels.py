"""Hand-written CPU kernels, built on first use with ``torch.utils.cpp_extension``: the
fused cross-entropies' vocabulary-wide passes (``csrc/softmax_rows.cpp``) and causal
attention over many short sequences (``csrc/causal_attention.cpp``).

**softmax_rows.**
For logit rows i (tokens × SGLD rows) and a vocabulary of V it returns, in one pass per row
that keeps the row in a core's cache,

    lowrank:  X_iv = a_tv + xd_iv − μ_i·u_v + σ_i·c_v,   logits_iv = X_iv / σ_i
    dense:    X_iv = xd_iv + c_v,                       logits_iv = X_iv

    lse_i = logsumexp_v logits_iv,   mean_i = Σ_v softmax_iv·X_iv,
    e_iv = exp(logits_iv − max_v logits_iv) (xd's dtype),   s_i = Σ_v e_iv
    lowrank only:  eu_i = Σ_v e_iv·u_v,   ec_i = Σ_v e_iv·c_v

so softmax = e/s, with the 1/s left to the caller (it scales the small matmul products
instead of the [rows, V] block). Inductor compiles the same math to a kernel that writes X
out and streams it from memory once per reduction: 1.0–1.2 ns per element on the
development CPU against 0.36 ns here (32 rows × 256 tokens × V = 5000, bf16).
``delta_softmax_rows`` is the same one-pass-per-row scheme for the int8-difference
unembedding (``fused_ce.int8_linear_cross_entropy``): int32 products in, the loss and an
int8 softmax − softmax* out.

**causal_attention.** softmax(q·kᵀ/√D + causal mask)·v and its backward for float32
[B, H, T, D] heads with D ∈ {16, 32, 64}, one (batch, head) pair per task with its q, k, v
in cache and register-tiled FMA loops. ATen's flash attention tiles for long sequences and
runs the paper-shaped model's heads (T = 256, D = 32) at about a quarter of the FMA peak:
forward + backward of 1,024 pairs took 0.30–0.31 s there against 0.12 s here. It is a
``torch.library`` op (``rllc::causal_attention``) with an autograd formula, so compiled
graphs call it as an opaque kernel.

The kernels are one extension (``csrc/module.cpp`` registers both sources, which ninja
compiles in parallel), built once per machine, Python, torch version and CPU capability
(≈ 30–60 s, cached under torch's extensions directory, ``TORCH_EXTENSIONS_DIR``); it needs
a C++ compiler and ninja (a dependency). Where the build fails, ``available()`` is False
after one warning and callers keep ATen's or ``torch.compile``'s kernels;
``RLLC_CPU_KERNELS=0`` chooses those without trying.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch
from torch import Tensor

CSRC = Path(__file__).with_name("csrc")
#: The extension's sources, each kernel's with its own registration function.
SOURCES = ("softmax_rows.cpp", "causal_attention.cpp", "module.cpp")

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
    name = f"rllc_cpu_kernels_{cap.lower()}"
    # the binary depends on Python, torch and the ISA: one build directory for each
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    build = root / f"{name}_{py}_torch{torch.__version__}"
    _ninja_on_path()
    try:
        build.mkdir(parents=True, exist_ok=True)
        if not (build / f"{name}.so").exists():
            print(f"rllc: building the CPU kernels in {build} (once, ≈ 30–60 s)",
                  file=sys.stderr, flush=True)
        return load(name, [str(CSRC / src) for src in SOURCES], extra_cflags=flags,
                    extra_ldflags=["-fopenmp"], build_directory=str(build), verbose=False)
    except Exception as err:  # no compiler or ninja, or a build error: keep the fallback
        warnings.warn(f"rllc's CPU kernels (softmax, attention) could not be built ({err}); "
                      "using ATen's or torch.compile's kernels instead", RuntimeWarning,
                      stacklevel=3)
        return None


def available() -> bool:
    """Whether the CPU kernels are built, building them on first call."""
    return _module() is not None


def _loaded(kernel: str) -> ModuleType:
    """The built extension; ``RuntimeError`` naming ``kernel`` where it is not."""
    mod = _module()
    if mod is None:
        raise RuntimeError(f"the CPU {kernel} kernel is not available (see available())")
    return mod


def usable(*tensors: Tensor) -> bool:
    """Whether ``softmax_rows`` serves these tensors: on the CPU, float32 or bfloat16 only,
    and the kernel builds."""
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16)
               for t in tensors) and available()


class SoftmaxRows(NamedTuple):
    """``softmax_rows``'s statistics (module docstring); eu and ec are empty in the dense
    form."""

    lse: Tensor  # [rows]
    mean: Tensor  # [rows]
    s: Tensor  # [rows]
    e: Tensor  # [rows, V], xd's dtype
    eu: Tensor  # [rows]
    ec: Tensor  # [rows]


def softmax_rows(
    xd: Tensor,
    *,
    a: Tensor | None = None,
    mu: Tensor | None = None,
    sigma: Tensor | None = None,
    u: Tensor | None = None,
    c: Tensor | None = None,
) -> SoftmaxRows:
    """The statistics of the rows of ``xd`` [rows, V] (float32 or bfloat16) in the module
    docstring. The lowrank form takes ``a`` [C, V] (row i reads a[i mod C]), ``mu``,
    ``sigma`` [rows], ``u`` and ``c`` [V]; the dense form only ``c`` (a bias, or None). All
    float32 but ``xd``."""
    mod = _loaded("softmax")
    empty = xd.new_empty(0, dtype=torch.float32)

    def f32(t: Tensor | None) -> Tensor:
        return empty if t is None else t.detach().contiguous()

    return SoftmaxRows(*mod.softmax_rows(xd.detach().contiguous(), f32(a), f32(mu),
                                         f32(sigma), f32(u), f32(c)))


def delta_softmax_rows(acc: Tensor, rs: Tensor, cs: Tensor, ref: Tensor, p_ref: Tensor,
                       t0: int, need_grad: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The vocabulary-wide passes of the int8-difference unembedding (``fused_ce``,
    precision "int8"): row i of ``acc`` [rows, V] (int32) is token t = (t0 + i) mod N of
    ``ref``, ``p_ref`` [N, V] (the reference logits and softmax),

        X_iv = ref_tv + rs_i·cs_v·acc_iv,   lse_i = logsumexp_v X_iv,
        Δp_iv = softmax_iv − p_ref_tv  as int8 round(Δp_iv/ds_i),  ds_i = max_v |Δp_iv|/127

    Returns (lse [rows], the int8 Δp [rows, V] and ds [rows], or None without
    ``need_grad``)."""
    mod = _loaded("softmax")
    lse, dq, ds = mod.delta_softmax_rows(acc.contiguous(), rs.contiguous(), cs.contiguous(),
                                         ref.contiguous(), p_ref.contiguous(), int(t0),
                                         bool(need_grad))
    return (lse, dq, ds) if need_grad else (lse, None, None)


#: Head sizes ``causal_attention.cpp`` is compiled for.
ATTENTION_HEAD_SIZES = (16, 32, 64)


def attention_usable(device: torch.device | str, dtype: torch.dtype, d_head: int) -> bool:
    """Whether ``causal_attention`` serves float32 heads of ``d_head`` on ``device``."""
    return (torch.device(device).type == "cpu" and dtype == torch.float32
            and d_head in ATTENTION_HEAD_SIZES and available())


def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _heads_like(q: Tensor) -> Tensor:  # [B, H, T, D] view of a [B, T, H, D] buffer
    B, H, T, D = q.shape
    return q.new_empty(B, T, H, D).permute(0, 2, 1, 3)


@torch.library.custom_op("rllc::causal_attention", mutates_args=())
def _attention_op(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    o, lse = _loaded("attention").attention_forward(*map(_last_dim_contiguous, (q, k, v)))
    return o, lse


@_attention_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    return _heads_like(q), q.new_empty(q.shape[:3])


@torch.library.custom_op("rllc::causal_attention_backward", mutates_args=())
def _attention_backward_op(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
                           grad_o: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    dq, dk, dv = _loaded("attention").attention_backward(
        *map(_last_dim_contiguous, (q, k, v, o)), lse.contiguous(), _last_dim_contiguous(grad_o))
    return dq, dk, dv


@_attention_backward_op.register_fake
def _(q, k, v, o, lse, grad_o):
    return _heads_like(q), _heads_like(q), _heads_like(q)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs, *output)


def _backward(ctx, grad_o: Tensor, grad_lse: Tensor | None):
    q, k, v, o, lse = ctx.saved_tensors
    return _attention_backward_op(q, k, v, o, lse, grad_o)


_attention_op.register_autograd(_backward, setup_context=_setup_context)


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, is_causal=True)`` for float32 [B, H, T, D]
    CPU heads (``attention_usable``), differentiable in q, k and v; the output is a
    [B, H, T, D] view of a [B, T, H, D] buffer, so ``o.transpose(1, 2)`` is contiguous."""
    # Compact inputs: compiled graphs keep a custom op's input strides, and views of a
    # [B, T, 3·H·D] projection would make them (and their recomputation in backward) write
    # strided buffers three times their size.
    return _attention_op(q.contiguous(), k.contiguous(), v.contiguous())[0]
