"""The hand-written CPU kernels equal the same math in torch. Tests of a kernel skip where
it is not built (fixture ``cpu_kernels_built``; a compiled graph also
needs ``inductor``); what holds without one runs everywhere."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from rllc.kernels import cpu_kernels


def reference(xd, a=None, mu=None, sigma=None, u=None, c=None):
    """(lse, mean, s, e) of the module docstring, in float64."""
    x = xd.double()
    if a is not None:
        rows, C = xd.shape[0], a.shape[0]
        x = (x + a.double().repeat(rows // C, 1) - mu.double()[:, None] * u.double()
             + sigma.double()[:, None] * c.double())
        inv = 1 / sigma.double()[:, None]
    else:
        x = x if c is None else x + c.double()
        inv = torch.ones_like(x[:, :1])
    logits = x * inv
    m = logits.amax(1, keepdim=True)
    e = (logits - m).exp()
    s = e.sum(1)
    return m.squeeze(1) + s.log(), (e * x).sum(1) / s, s, e


def problem(rows=12, C=4, V=1000 + 5, seed=0):  # V: a vectorised body and a scalar tail
    g = torch.Generator().manual_seed(seed)
    return dict(
        xd=torch.randn(rows, V, generator=g) * 3,
        a=torch.randn(C, V, generator=g) * 3,
        mu=torch.randn(rows, generator=g) * 0.1,
        sigma=torch.rand(rows, generator=g) + 0.5,
        u=torch.randn(V, generator=g),
        c=torch.randn(V, generator=g),
    )


@pytest.mark.usefixtures("cpu_kernels_built")
@pytest.mark.parametrize("form", ["lowrank", "dense", "dense without bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_rows_equal_torch(form, dtype):
    p = problem()
    p["xd"] = p["xd"].to(dtype)
    if form != "lowrank":
        p = {"xd": p["xd"], "c": None if form == "dense without bias" else p["c"]}
    lse, mean, s, e, eu, ec = cpu_kernels.softmax_rows(**p)
    ref = reference(**p)
    assert e.dtype == dtype and e.shape == p["xd"].shape
    # float32 sums of 1005 terms and a fast exp (20 ulp): relative 1e-5; e rounds to xd's dtype
    tol = 1e-5 if dtype == torch.float32 else 4e-3
    for got, want in zip((lse, mean, s), ref[:3], strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e.double(), ref[3], rtol=tol, atol=1e-7)
    if form == "lowrank":  # the u and c moments, Σ_v e_v·u_v and Σ_v e_v·c_v
        for got, w in ((eu, p["u"]), (ec, p["c"])):
            torch.testing.assert_close(got.double(), ref[3] @ w.double(), rtol=1e-5, atol=1e-5)
    else:
        assert eu.numel() == 0 and ec.numel() == 0


@pytest.mark.usefixtures("cpu_kernels_built")
def test_extreme_logits_stay_finite_and_non_finite_rows_stay_non_finite():
    p = problem()
    xd = p["xd"].clone()
    xd[0] *= 1e4  # logits spread over ±10⁵: exp underflows to 0 for all but the max
    xd[3, 7] = float("nan")
    xd[5, 2] = float("inf")
    xd[6, -1] = float("nan")  # in the scalar tail
    lse, mean, *_ = cpu_kernels.softmax_rows(xd, c=p["c"])
    torch.testing.assert_close(lse[0].double(), reference(xd[:1], c=p["c"])[0][0], rtol=1e-6,
                               atol=0)
    assert not torch.isfinite(lse[[3, 5, 6]]).any()
    finite = [0, 1, 2, 4, 7, 8, 9, 10, 11]
    assert torch.isfinite(lse[finite]).all() and torch.isfinite(mean[finite]).all()


@pytest.mark.usefixtures("cpu_kernels_built")
def test_bad_inputs_are_refused():
    p = problem()
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        cpu_kernels.softmax_rows(p["xd"].double())
    with pytest.raises(RuntimeError, match="rows a multiple of C"):
        cpu_kernels.softmax_rows(p["xd"][:10], a=p["a"][:3], mu=p["mu"][:10],
                                 sigma=p["sigma"][:10], u=p["u"], c=p["c"])
    with pytest.raises(RuntimeError, match="mu must be"):
        cpu_kernels.softmax_rows(p["xd"], a=p["a"], mu=p["mu"][:5], sigma=p["sigma"],
                                 u=p["u"], c=p["c"])


@pytest.mark.usefixtures("cpu_kernels_built")
def test_usable_for_cpu_float32_and_bfloat16():
    assert cpu_kernels.usable(torch.zeros(2), torch.zeros(2, dtype=torch.bfloat16))


def test_not_usable_for_other_dtypes_or_devices():
    assert not cpu_kernels.usable(torch.zeros(2, dtype=torch.float64))
    assert not cpu_kernels.usable(torch.zeros(2), torch.zeros(2, dtype=torch.float16))
    assert not cpu_kernels.usable(torch.zeros(2, device="meta"))


def test_a_failed_build_warns_once_and_leaves_the_fallback(monkeypatch):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise OSError("no C++ compiler")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    monkeypatch.delenv("RLLC_CPU_KERNELS", raising=False)  # =0 would not try to build
    cpu_kernels._module.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"\(no C\+\+ compiler\)"):
            assert not cpu_kernels.available()
        assert not cpu_kernels.usable(torch.zeros(2))  # cached: no second warning
        with pytest.raises(RuntimeError, match="not available"):
            cpu_kernels.softmax_rows(torch.zeros(2, 3))
        with warnings.catch_warnings():  # one extension: its failure is not retried
            warnings.simplefilter("error")
            assert not cpu_kernels.attention_usable("cpu", torch.float32, 32)
    finally:
        cpu_kernels._module.cache_clear()  # the next caller loads the built kernel again


def heads(B, H, T, D, seed, dtype=torch.float64):
    """q, k, v, grad_out [B, H, T, D] as the model makes them: views of a [B, T, 3·H·D]
    projection (T strided by 3·H·D)."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, T, 3, H, D, generator=g, dtype=dtype)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    return q, k, v, torch.randn(B, H, T, D, generator=g, dtype=dtype)


def attention_and_grads(fn, q, k, v, grad_out):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    o = fn(q, k, v)
    return (o, *torch.autograd.grad(o, (q, k, v), grad_out))


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


# T: one row block (8), ragged blocks and score tiles, the paper's context; D: each compiled size
@pytest.mark.usefixtures("cpu_kernels_built")
@pytest.mark.parametrize(("B", "H", "T", "D"),
                         [(1, 1, 8, 16), (2, 3, 37, 32), (2, 2, 70, 64), (3, 2, 256, 32)])
def test_causal_attention_equals_sdpa(B, H, T, D):
    q, k, v, g = heads(B, H, T, D, seed=T)
    want = attention_and_grads(sdpa, q, k, v, g)  # float64
    got = attention_and_grads(cpu_kernels.causal_attention, *(t.float() for t in (q, k, v, g)))
    # float32 sums over ≤ 256 keys and a fast exp (20 ulp)
    for name, x, y in zip(("o", "dq", "dk", "dv"), got, want, strict=True):
        torch.testing.assert_close(x.double(), y, rtol=1e-5, atol=1e-5, msg=name)
    assert got[0].transpose(1, 2).is_contiguous()  # [B, T, H, D] memory: heads concatenate freely


@pytest.mark.usefixtures("cpu_kernels_built", "inductor")
def test_causal_attention_in_a_compiled_graph_equals_eager():
    """The op is opaque to inductor (a ``torch.library`` op with a fake and an autograd
    rule): a compiled graph around it gives the eager values and gradients."""
    q, k, v, _ = heads(2, 2, 40, 16, seed=1, dtype=torch.float32)
    g = torch.randn(2, 40, 32)

    def f(attend, q, k, v):
        return (attend(q * 1.5, k, v).transpose(1, 2).reshape(2, 40, 32) * 2).sin()

    compiled = torch.compile(f, dynamic=False)
    eager = attention_and_grads(lambda *t: f(sdpa, *t), q, k, v, g)
    fused = attention_and_grads(lambda *t: compiled(cpu_kernels.causal_attention, *t), q, k, v, g)
    for x, y in zip(fused, eager, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("cpu_kernels_built")
def test_causal_attention_op_registration():
    q, k, v, _ = heads(1, 2, 12, 16, seed=2, dtype=torch.float32)
    torch.library.opcheck(cpu_kernels._attention_op,
                          tuple(t.detach().requires_grad_() for t in (q, k, v)))


@pytest.mark.usefixtures("cpu_kernels_built")
def test_attention_usable_for_cpu_float32_compiled_head_sizes():
    assert all(cpu_kernels.attention_usable("cpu", torch.float32, d)
               for d in cpu_kernels.ATTENTION_HEAD_SIZES)


def test_attention_not_usable_for_other_dtypes_devices_or_head_sizes():
    assert not cpu_kernels.attention_usable("cpu", torch.float64, 32)
    assert not cpu_kernels.attention_usable("cpu", torch.float32, 4)
    assert not cpu_kernels.attention_usable("cuda", torch.float32, 32)


@pytest.mark.usefixtures("cpu_kernels_built")
def test_causal_attention_refuses_what_it_is_not_built_for():
    q = torch.zeros(1, 1, 4, 16, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float32"):
        cpu_kernels.causal_attention(q, q, q)
    q = torch.zeros(1, 1, 4, 8)
    with pytest.raises(RuntimeError, match="head size must be 16, 32 or 64"):
        cpu_kernels.causal_attention(q, q, q)


@pytest.mark.usefixtures("cpu_kernels_built")
def test_delta_softmax_rows_equal_torch():
    """Rows wrap around the reference tokens from t0; Δp comes back within half an int8
    step; a NaN row stays NaN (its gradient scale too)."""
    g = torch.Generator().manual_seed(3)
    rows, N, V, t0 = 9, 4, 1005, 3
    acc = torch.randint(-2000, 2000, (rows, V), generator=g, dtype=torch.int32)
    rs, cs = torch.rand(rows, generator=g) * 1e-3, torch.rand(V, generator=g) * 1e-2
    ref = torch.randn(N, V, generator=g) * 3
    p_ref = ref.softmax(1)
    acc[5, 7] = 2**31 - 1
    rs[5] = float("nan")
    lse, dq, ds = cpu_kernels.delta_softmax_rows(acc, rs, cs, ref, p_ref, t0, True)
    t = (t0 + torch.arange(rows)) % N
    x = ref.double()[t] + rs.double()[:, None] * cs.double() * acc.double()
    want = x.logsumexp(1)
    dp = (x - want[:, None]).exp() - p_ref.double()[t]
    ok = torch.arange(rows) != 5
    torch.testing.assert_close(lse[ok].double(), want[ok], rtol=1e-5, atol=1e-5)
    assert torch.isnan(lse[5]) and torch.isnan(ds[5])
    back = dq[ok].double() * ds[ok].double()[:, None]
    assert ((back - dp[ok]).abs() <= ds[ok].double()[:, None] / 2 + 1e-6).all()
    assert cpu_kernels.delta_softmax_rows(acc, rs, cs, ref, p_ref, t0, False)[1] is None
