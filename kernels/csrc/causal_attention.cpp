// Causal scaled-dot-product attention, forward and backward, for many short sequences of
// small heads (see rllc/kernels/cpu_kernels.py).
//
// For each (batch, head) pair with q, k, v [T, D] and s = 1/√D:
//     S_ij = s·q_i·k_j (j ≤ i),   lse_i = logsumexp_j S_ij,   P_ij = exp(S_ij − lse_i)
//     o_i  = Σ_j P_ij·v_j
// and backward, with Δ_i = do_i·o_i:
//     dP_ij = do_i·v_j,   dS_ij = P_ij·(dP_ij − Δ_i)
//     dq_i = s·Σ_j dS_ij·k_j,   dk_j = s·Σ_i dS_ij·q_i,   dv_j = Σ_i P_ij·do_i
//
// One pair is one task: its q, k, v (and kᵀ, vᵀ) are copied into buffers that stay in the
// core's L1/L2 cache, and blocks of RB query rows go through register-tiled loops
// (at::vec FMAs). ATen's flash attention tiles for long sequences; at T = 256 and D = 32
// its many tiny GEMM calls run near a quarter of the FMA peak.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t W = Vec::size();
constexpr int64_t RB = 8;  // query rows per block
constexpr int64_t CB = 2;  // key vectors per score tile: RB × CB accumulators
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

inline float horizontal_max(const Vec& v) {
  float t[W];
  v.store(t);
  float m = t[0];
  for (int64_t j = 1; j < W; ++j) m = t[j] > m ? t[j] : m;
  return m;
}

inline float horizontal_sum(const Vec& v) {
  float t[W];
  v.store(t);
  float s = 0.f;
  for (int64_t j = 0; j < W; ++j) s += t[j];
  return s;
}

// out[r][j] = Σ_d a[r][d]·bt[d][j] for r < RB, j < ncols (a multiple of CB·W);
// a [RB, D] row-major, bt [D, ld] row-major, out [RB, ld].
template <int64_t D>
inline void rows_times_bt(const float* a, const float* bt, int64_t ld, int64_t ncols,
                          float* out) {
  for (int64_t j = 0; j < ncols; j += CB * W) {
    Vec acc[RB][CB];
    for (int64_t r = 0; r < RB; ++r)
      for (int64_t c = 0; c < CB; ++c) acc[r][c] = Vec(0.f);
    for (int64_t d = 0; d < D; ++d) {
      Vec b[CB];
      for (int64_t c = 0; c < CB; ++c) b[c] = Vec::loadu(bt + d * ld + j + c * W);
      for (int64_t r = 0; r < RB; ++r) {
        const Vec x(a[r * D + d]);
        for (int64_t c = 0; c < CB; ++c) acc[r][c] = at::vec::fmadd(x, b[c], acc[r][c]);
      }
    }
    for (int64_t r = 0; r < RB; ++r)
      for (int64_t c = 0; c < CB; ++c) acc[r][c].store(out + r * ld + j + c * W);
  }
}

// out[r][:] = Σ_{j<n} p[r][j]·b[j][:] for r < RB; p [RB, ld], b [n, D], out [RB, D].
template <int64_t D>
inline void rows_times_b(const float* p, int64_t ld, int64_t n, const float* b, float* out) {
  constexpr int64_t ND = D / W;
  Vec acc[RB][ND];
  for (int64_t r = 0; r < RB; ++r)
    for (int64_t c = 0; c < ND; ++c) acc[r][c] = Vec(0.f);
  for (int64_t j = 0; j < n; ++j) {
    Vec y[ND];
    for (int64_t c = 0; c < ND; ++c) y[c] = Vec::loadu(b + j * D + c * W);
    for (int64_t r = 0; r < RB; ++r) {
      const Vec x(p[r * ld + j]);
      for (int64_t c = 0; c < ND; ++c) acc[r][c] = at::vec::fmadd(x, y[c], acc[r][c]);
    }
  }
  for (int64_t r = 0; r < RB; ++r)
    for (int64_t c = 0; c < ND; ++c) acc[r][c].store(out + r * D + c * W);
}

// acc[j][:] += Σ_r g[r][j]·x[r][:] for j < n; g [RB, ld], x [RB, D], acc [n, D]. Two keys
// at a time, each summed in two halves of the block, so that four FMA chains interleave.
template <int64_t D>
inline void accumulate_gt_x(const float* g, int64_t ld, int64_t n, const float* x,
                            float* acc) {
  constexpr int64_t ND = D / W, HALF = RB / 2;
  Vec xr[RB][ND];
  for (int64_t r = 0; r < RB; ++r)
    for (int64_t c = 0; c < ND; ++c) xr[r][c] = Vec::loadu(x + r * D + c * W);
  int64_t j = 0;
  for (; j + 2 <= n; j += 2) {
    Vec a0[ND], a1[ND], b0[ND], b1[ND];
    for (int64_t c = 0; c < ND; ++c) {
      a0[c] = Vec::loadu(acc + j * D + c * W);
      b0[c] = Vec::loadu(acc + (j + 1) * D + c * W);
      a1[c] = b1[c] = Vec(0.f);
    }
    for (int64_t r = 0; r < HALF; ++r) {
      const Vec ga(g[r * ld + j]), gb(g[r * ld + j + 1]);
      const Vec ha(g[(r + HALF) * ld + j]), hb(g[(r + HALF) * ld + j + 1]);
      for (int64_t c = 0; c < ND; ++c) {
        a0[c] = at::vec::fmadd(ga, xr[r][c], a0[c]);
        b0[c] = at::vec::fmadd(gb, xr[r][c], b0[c]);
        a1[c] = at::vec::fmadd(ha, xr[r + HALF][c], a1[c]);
        b1[c] = at::vec::fmadd(hb, xr[r + HALF][c], b1[c]);
      }
    }
    for (int64_t c = 0; c < ND; ++c) {
      (a0[c] + a1[c]).store(acc + j * D + c * W);
      (b0[c] + b1[c]).store(acc + (j + 1) * D + c * W);
    }
  }
  for (; j < n; ++j) {
    Vec a[ND];
    for (int64_t c = 0; c < ND; ++c) a[c] = Vec::loadu(acc + j * D + c * W);
    for (int64_t r = 0; r < RB; ++r) {
      const Vec gr(g[r * ld + j]);
      for (int64_t c = 0; c < ND; ++c) a[c] = at::vec::fmadd(gr, xr[r][c], a[c]);
    }
    for (int64_t c = 0; c < ND; ++c) a[c].store(acc + j * D + c * W);
  }
}

// A [B, H, T, D] view with a contiguous last dim: element (b, h, t, :) at data + offset.
struct Heads {
  const float* data;
  int64_t sb, sh, st;
  Heads(const at::Tensor& t)
      : data(t.data_ptr<float>()), sb(t.stride(0)), sh(t.stride(1)), st(t.stride(2)) {}
  const float* row(int64_t b, int64_t h, int64_t t) const { return data + b * sb + h * sh + t * st; }
};

// Per-pair buffers, padded to whole row blocks and score tiles (padding stays zero).
struct Buffers {
  int64_t Tr, Tc;  // rows padded to RB, columns padded to CB·W
  std::vector<float> q, k, v, kt, vt, o_or_do, s, p, ds, dk, dv;
  Buffers(int64_t T, int64_t D)
      : Tr(round_up(T, RB)), Tc(round_up(round_up(T, RB), CB * W)),
        q(Tr * D), k(Tc * D), v(Tc * D), kt(D * Tc), vt(D * Tc), o_or_do(Tr * D),
        s(RB * Tc), p(RB * Tc), ds(RB * Tc), dk(Tc * D), dv(Tc * D) {}
};

// Copies the pair's rows (q scaled by `scale`) into row-major [T, D] buffers; kt and vt get
// the transposes when given.
template <int64_t D>
void load_pair(const Heads& src, int64_t b, int64_t h, int64_t T, float scale, float* dst,
               float* dst_t, int64_t ld_t) {
  const Vec vscale(scale);
  for (int64_t t = 0; t < T; ++t) {
    const float* row = src.row(b, h, t);
    for (int64_t d = 0; d < D; d += W) (Vec::loadu(row + d) * vscale).store(dst + t * D + d);
  }
  if (dst_t == nullptr) return;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t d = 0; d < D; ++d) dst_t[d * ld_t + t] = dst[t * D + d];
}

// Masks a block row (query i) to keys j ≤ i: s[j] = −inf for i < j < ncols.
inline void mask_row(float* s_row, int64_t i, int64_t ncols) {
  for (int64_t j = i + 1; j < ncols; ++j) s_row[j] = NEG_INF;
}

template <int64_t D>
void forward_impl(const Heads& q, const Heads& k, const Heads& v, float* o, float* lse,
                  int64_t B, int64_t H, int64_t T) {
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  at::parallel_for(0, B * H, 1, [&](int64_t p0, int64_t p1) {
    Buffers buf(T, D);
    const int64_t ld = buf.Tc;
    for (int64_t pair = p0; pair < p1; ++pair) {
      const int64_t b = pair / H, h = pair % H;
      load_pair<D>(q, b, h, T, scale, buf.q.data(), nullptr, 0);
      load_pair<D>(k, b, h, T, 1.f, buf.k.data(), buf.kt.data(), ld);
      load_pair<D>(v, b, h, T, 1.f, buf.v.data(), nullptr, 0);
      float o_blk[RB * D];
      for (int64_t i0 = 0; i0 < T; i0 += RB) {
        const int64_t n = std::min(i0 + RB, T);  // keys this block sees
        const int64_t ncols = round_up(n, CB * W);
        rows_times_bt<D>(buf.q.data() + i0 * D, buf.kt.data(), ld, ncols, buf.s.data());
        float inv_sum[RB];
        for (int64_t r = 0; r < RB; ++r) {
          const int64_t i = i0 + r;
          float* s_row = buf.s.data() + r * ld;
          if (i >= T) {  // padding row: no weights
            std::fill(s_row, s_row + ncols, 0.f);
            inv_sum[r] = 0.f;
            continue;
          }
          mask_row(s_row, i, ncols);
          Vec vmax(NEG_INF);
          for (int64_t j = 0; j < ncols; j += W) vmax = at::vec::maximum(vmax, Vec::loadu(s_row + j));
          const float m = horizontal_max(vmax);
          const Vec vm(m);
          Vec vs(0.f);
          for (int64_t j = 0; j < ncols; j += W) {
            const Vec e = (Vec::loadu(s_row + j) - vm).exp_u20();
            e.store(s_row + j);
            vs = vs + e;
          }
          const float sum = horizontal_sum(vs);
          inv_sum[r] = 1.f / sum;
          lse[pair * T + i] = m + std::log(sum);
        }
        rows_times_b<D>(buf.s.data(), ld, n, buf.v.data(), o_blk);
        for (int64_t r = 0; r < RB && i0 + r < T; ++r) {
          float* dst = o + ((b * T + i0 + r) * H + h) * D;  // o is [B, T, H, D]
          for (int64_t d = 0; d < D; ++d) dst[d] = o_blk[r * D + d] * inv_sum[r];
        }
      }
    }
  });
}

template <int64_t D>
void backward_impl(const Heads& q, const Heads& k, const Heads& v, const Heads& o,
                   const Heads& dout, const float* lse, float* dq, float* dk, float* dv,
                   int64_t B, int64_t H, int64_t T) {
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  at::parallel_for(0, B * H, 1, [&](int64_t p0, int64_t p1) {
    Buffers buf(T, D);
    const int64_t ld = buf.Tc;
    std::vector<float> delta(buf.Tr);
    for (int64_t pair = p0; pair < p1; ++pair) {
      const int64_t b = pair / H, h = pair % H;
      load_pair<D>(q, b, h, T, scale, buf.q.data(), nullptr, 0);
      load_pair<D>(k, b, h, T, 1.f, buf.k.data(), buf.kt.data(), ld);
      load_pair<D>(v, b, h, T, 1.f, buf.v.data(), buf.vt.data(), ld);
      load_pair<D>(dout, b, h, T, 1.f, buf.o_or_do.data(), nullptr, 0);
      for (int64_t t = 0; t < T; ++t) {
        const float* o_row = o.row(b, h, t);
        const float* do_row = buf.o_or_do.data() + t * D;
        float acc = 0.f;
        for (int64_t d = 0; d < D; ++d) acc += o_row[d] * do_row[d];
        delta[t] = acc;
      }
      std::fill(buf.dk.begin(), buf.dk.end(), 0.f);
      std::fill(buf.dv.begin(), buf.dv.end(), 0.f);
      float dq_blk[RB * D];
      for (int64_t i0 = 0; i0 < T; i0 += RB) {
        const int64_t n = std::min(i0 + RB, T);
        const int64_t ncols = round_up(n, CB * W);
        rows_times_bt<D>(buf.q.data() + i0 * D, buf.kt.data(), ld, ncols, buf.p.data());
        rows_times_bt<D>(buf.o_or_do.data() + i0 * D, buf.vt.data(), ld, ncols, buf.ds.data());
        for (int64_t r = 0; r < RB; ++r) {
          const int64_t i = i0 + r;
          float* p_row = buf.p.data() + r * ld;
          float* ds_row = buf.ds.data() + r * ld;
          if (i >= T) {
            std::fill(p_row, p_row + ncols, 0.f);
            std::fill(ds_row, ds_row + ncols, 0.f);
            continue;
          }
          mask_row(p_row, i, ncols);
          const Vec vl(lse[pair * T + i]), vd(delta[i]);
          for (int64_t j = 0; j < ncols; j += W) {
            const Vec pj = (Vec::loadu(p_row + j) - vl).exp_u20();
            pj.store(p_row + j);
            (pj * (Vec::loadu(ds_row + j) - vd)).store(ds_row + j);
          }
        }
        rows_times_b<D>(buf.ds.data(), ld, n, buf.k.data(), dq_blk);
        for (int64_t r = 0; r < RB && i0 + r < T; ++r) {
          float* dst = dq + ((b * T + i0 + r) * H + h) * D;
          for (int64_t d = 0; d < D; ++d) dst[d] = dq_blk[r * D + d] * scale;
        }
        accumulate_gt_x<D>(buf.ds.data(), ld, n, buf.q.data() + i0 * D, buf.dk.data());
        accumulate_gt_x<D>(buf.p.data(), ld, n, buf.o_or_do.data() + i0 * D, buf.dv.data());
      }
      for (int64_t t = 0; t < T; ++t) {
        float* dk_dst = dk + ((b * T + t) * H + h) * D;
        float* dv_dst = dv + ((b * T + t) * H + h) * D;
        for (int64_t d = 0; d < D; ++d) {
          dk_dst[d] = buf.dk[t * D + d];
          dv_dst[d] = buf.dv[t * D + d];
        }
      }
    }
  });
}

void check_heads(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 4 && t.scalar_type() == at::kFloat && t.stride(3) == 1,
              name, " must be a float32 [B, H, T, D] tensor with a contiguous last dim");
  TORCH_CHECK(t.sizes() == like.sizes(), name, " must have q's shape");
}

#define DISPATCH_D(D_VALUE, ...)                                          \
  switch (D_VALUE) {                                                      \
    case 16: { constexpr int64_t D = 16; __VA_ARGS__; break; }            \
    case 32: { constexpr int64_t D = 32; __VA_ARGS__; break; }            \
    case 64: { constexpr int64_t D = 64; __VA_ARGS__; break; }            \
    default: TORCH_CHECK(false, "head size must be 16, 32 or 64, got ", D_VALUE); \
  }

// (o, lse): o a [B, H, T, D] view of a [B, T, H, D] buffer, lse [B, H, T].
std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_heads(q, "q", q);
  check_heads(k, "k", q);
  check_heads(v, "v", q);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dv = q.size(3);
  auto o = at::empty({B, T, H, Dv}, q.options());
  auto lse = at::empty({B, H, T}, q.options());
  DISPATCH_D(Dv, forward_impl<D>(Heads(q), Heads(k), Heads(v), o.data_ptr<float>(),
                                 lse.data_ptr<float>(), B, H, T));
  return {o.permute({0, 2, 1, 3}), lse};
}

// (dq, dk, dv), each a [B, H, T, D] view of a [B, T, H, D] buffer.
std::vector<at::Tensor> backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& o, const at::Tensor& lse,
                                 const at::Tensor& dout) {
  check_heads(q, "q", q);
  check_heads(k, "k", q);
  check_heads(v, "v", q);
  check_heads(o, "o", q);
  check_heads(dout, "grad_out", q);
  TORCH_CHECK(lse.is_contiguous() && lse.numel() == q.size(0) * q.size(1) * q.size(2),
              "lse must be the forward's contiguous [B, H, T]");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Dv = q.size(3);
  auto dq = at::empty({B, T, H, Dv}, q.options());
  auto dk = at::empty_like(dq), dv = at::empty_like(dq);
  DISPATCH_D(Dv, backward_impl<D>(Heads(q), Heads(k), Heads(v), Heads(o), Heads(dout),
                                  lse.data_ptr<float>(), dq.data_ptr<float>(),
                                  dk.data_ptr<float>(), dv.data_ptr<float>(), B, H, T));
  return {dq.permute({0, 2, 1, 3}), dk.permute({0, 2, 1, 3}), dv.permute({0, 2, 1, 3})};
}

}  // namespace

// Called from module.cpp: the kernels are one extension, their sources compiled in parallel.
void register_causal_attention(pybind11::module_& m) {
  m.def("attention_forward", &forward, "causal attention forward: (o, lse) (see the file header)");
  m.def("attention_backward", &backward, "causal attention backward: (dq, dk, dv)");
}
