// Vocabulary-wide softmax statistics of many logit rows in one pass per row, for the fused
// cross-entropy kernels of rllc.kernels.fused_ce (see rllc/kernels/cpu_kernels.py).
//
// Row i of xd [rows, V] (rows = R·C, token t = i mod C) has
//     lowrank:  X_iv = a_tv + xd_iv − μ_i·u_v + σ_i·c_v,   logits_iv = X_iv / σ_i
//     dense:    X_iv = xd_iv + c_v,                       logits_iv = X_iv
// and gets lse_i = logsumexp_v logits_iv, mean_i = Σ_v softmax_iv·X_iv,
// s_i = Σ_v e_iv and e_iv = exp(logits_iv − max_v logits_iv) written in xd's dtype; the
// lowrank form also Σ_v e_iv·u_v and Σ_v e_iv·c_v (the μ and σ columns of the gradient,
// which would otherwise widen the caller's k-wide e·Mᵀ matmul by two).
//
// Inductor's kernel for the same math writes X to memory and streams it from memory once per
// reduction (max, sum, normalised output); here each row stays in the core's L1/L2 cache
// between its two passes, and the softmax normalisation 1/s is left to the caller, who
// applies it to the small matmul results instead of the [rows, V] block.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;

inline float horizontal_max(const Vec& v) {
  float t[Vec::size()];
  v.store(t);
  float m = t[0];
  for (int j = 1; j < Vec::size(); ++j) m = (t[j] > m || std::isnan(t[j])) ? t[j] : m;
  return m;
}

inline float horizontal_sum(const Vec& v) {
  float t[Vec::size()];
  v.store(t);
  float s = 0.f;
  for (int j = 0; j < Vec::size(); ++j) s += t[j];
  return s;
}

template <typename T, bool LOWRANK>
void softmax_rows_impl(const float* a, const T* xd, const float* mu, const float* sigma,
                       const float* u, const float* c, float* lse, float* mean, float* sum,
                       float* sum_u, float* sum_c, T* e_out, int64_t rows, int64_t C,
                       int64_t V) {
  at::parallel_for(0, rows, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> buffer(V);  // one row of X, cache-resident between the two passes
    float* x_row = buffer.data();
    const int64_t W = Vec::size();
    const int64_t V_vec = V - V % W;
    for (int64_t i = i0; i < i1; ++i) {
      const T* xd_row = xd + i * V;
      T* e_row = e_out + i * V;
      const float* a_row = LOWRANK ? a + (i % C) * V : nullptr;
      const float mu_i = LOWRANK ? mu[i] : 0.f;
      const float sigma_i = LOWRANK ? sigma[i] : 1.f;
      const float inv = 1.f / sigma_i;
      // pass 1: X and its max (σ > 0, so max logits = max X / σ)
      Vec vmax(-std::numeric_limits<float>::infinity());
      const Vec vmu(mu_i), vsigma(sigma_i);
      int64_t v = 0;
      for (; v < V_vec; v += W) {
        Vec x = at::vec::convert<float>(at::vec::Vectorized<T>::loadu(xd_row + v, W));
        if constexpr (LOWRANK) {
          x = x + Vec::loadu(a_row + v) - vmu * Vec::loadu(u + v) + vsigma * Vec::loadu(c + v);
        } else if (c != nullptr) {
          x = x + Vec::loadu(c + v);
        }
        x.store(x_row + v);
        vmax = at::vec::maximum(vmax, x);
      }
      float x_max = horizontal_max(vmax);
      for (; v < V; ++v) {
        float x = static_cast<float>(xd_row[v]);
        if constexpr (LOWRANK) {
          x += a_row[v] - mu_i * u[v] + sigma_i * c[v];
        } else if (c != nullptr) {
          x += c[v];
        }
        x_row[v] = x;
        x_max = (x > x_max || std::isnan(x)) ? x : x_max;
      }
      // pass 2: e = exp(logits − max), Σe, Σe·X
      const float m = x_max * inv;
      const Vec vinv(inv), vm(m);
      Vec vs(0.f), vsx(0.f), vsu(0.f), vsc(0.f);
      for (v = 0; v < V_vec; v += W) {
        const Vec x = Vec::loadu(x_row + v);
        const Vec e = (x * vinv - vm).exp_u20();
        vs = vs + e;
        vsx = vsx + e * x;
        if constexpr (LOWRANK) {
          vsu = vsu + e * Vec::loadu(u + v);
          vsc = vsc + e * Vec::loadu(c + v);
        }
        at::vec::convert<T>(e).store(e_row + v, W);
      }
      float s = horizontal_sum(vs), sx = horizontal_sum(vsx);
      float su = horizontal_sum(vsu), sc = horizontal_sum(vsc);
      for (; v < V; ++v) {
        const float e = std::exp(x_row[v] * inv - m);
        s += e;
        sx += e * x_row[v];
        if constexpr (LOWRANK) {
          su += e * u[v];
          sc += e * c[v];
        }
        e_row[v] = static_cast<T>(e);
      }
      lse[i] = m + std::log(s);
      mean[i] = sx / s;
      sum[i] = s;
      if constexpr (LOWRANK) {
        sum_u[i] = su;
        sum_c[i] = sc;
      }
    }
  });
}

// Returns (lse, mean, s [rows], e [rows, V] in xd's dtype, Σe·u, Σe·c [rows]; the last two
// empty in the dense form). a is [C, V] or empty (dense); mu, sigma [rows] and u [V] are used
// with a; c [V] may be empty (dense).
std::vector<at::Tensor> softmax_rows(const at::Tensor& xd, const at::Tensor& a,
                                     const at::Tensor& mu, const at::Tensor& sigma,
                                     const at::Tensor& u, const at::Tensor& c) {
  TORCH_CHECK(xd.dim() == 2 && xd.is_contiguous(), "xd must be a contiguous [rows, V] tensor");
  TORCH_CHECK(xd.scalar_type() == at::kFloat || xd.scalar_type() == at::kBFloat16,
              "xd must be float32 or bfloat16");
  const int64_t rows = xd.size(0), V = xd.size(1);
  const bool lowrank = a.numel() > 0;
  auto f32 = [&](const at::Tensor& t, int64_t n, const char* name) {
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == n,
                name, " must be a contiguous float32 tensor of ", n, " numbers");
    return t.data_ptr<float>();
  };
  const float* c_ptr = c.numel() > 0 ? f32(c, V, "c") : nullptr;
  const float *a_ptr = nullptr, *mu_ptr = nullptr, *sigma_ptr = nullptr, *u_ptr = nullptr;
  int64_t C = 1;
  if (lowrank) {
    TORCH_CHECK(a.dim() == 2 && a.size(1) == V && rows % a.size(0) == 0,
                "a must be [C, V] with rows a multiple of C");
    TORCH_CHECK(c_ptr != nullptr, "the lowrank form needs c");
    C = a.size(0);
    a_ptr = f32(a, C * V, "a");
    mu_ptr = f32(mu, rows, "mu");
    sigma_ptr = f32(sigma, rows, "sigma");
    u_ptr = f32(u, V, "u");
  }
  auto opts = xd.options().dtype(at::kFloat);
  auto lse = at::empty({rows}, opts), mean = at::empty({rows}, opts), sum = at::empty({rows}, opts);
  auto sum_u = at::empty({lowrank ? rows : 0}, opts), sum_c = at::empty({lowrank ? rows : 0}, opts);
  auto e = at::empty_like(xd);
  float *lse_p = lse.data_ptr<float>(), *mean_p = mean.data_ptr<float>(),
        *sum_p = sum.data_ptr<float>(), *su_p = sum_u.data_ptr<float>(),
        *sc_p = sum_c.data_ptr<float>();
  if (xd.scalar_type() == at::kFloat) {
    (lowrank ? softmax_rows_impl<float, true> : softmax_rows_impl<float, false>)(
        a_ptr, xd.data_ptr<float>(), mu_ptr, sigma_ptr, u_ptr, c_ptr, lse_p, mean_p, sum_p,
        su_p, sc_p, e.data_ptr<float>(), rows, C, V);
  } else {
    (lowrank ? softmax_rows_impl<at::BFloat16, true> : softmax_rows_impl<at::BFloat16, false>)(
        a_ptr, xd.data_ptr<at::BFloat16>(), mu_ptr, sigma_ptr, u_ptr, c_ptr, lse_p, mean_p,
        sum_p, su_p, sc_p, e.data_ptr<at::BFloat16>(), rows, C, V);
  }
  return {lse, mean, sum, e, sum_u, sum_c};
}

// The int8-difference unembedding (rllc.estimators.fused_ce, precision "int8"). Row i of
// acc [rows, V] (int32, the product of int8 (h − h*) and int8 W) is token t = (t0 + i) mod N:
//     X_iv = ref_tv + rs_i·cs_v·acc_iv,   lse_i = logsumexp_v X_iv
// and with need_grad the softmax's difference from the reference's, Δp_iv = softmax_iv − p_tv,
// is written as int8 round(Δp_iv / ds_i) with ds_i = max_v |Δp_iv| / 127.
// Returns (lse [rows], dq [rows, V] int8 or empty, ds [rows] or empty).
std::vector<at::Tensor> delta_softmax_rows(const at::Tensor& acc, const at::Tensor& rs,
                                           const at::Tensor& cs, const at::Tensor& ref,
                                           const at::Tensor& p_ref, int64_t t0,
                                           bool need_grad) {
  TORCH_CHECK(acc.dim() == 2 && acc.is_contiguous() && acc.scalar_type() == at::kInt,
              "acc must be a contiguous int32 [rows, V] tensor");
  const int64_t rows = acc.size(0), V = acc.size(1);
  TORCH_CHECK(ref.dim() == 2 && ref.size(1) == V && ref.is_contiguous() &&
                  ref.scalar_type() == at::kFloat,
              "ref must be a contiguous float32 [N, V] tensor");
  const int64_t N = ref.size(0);
  TORCH_CHECK(p_ref.sizes() == ref.sizes() && p_ref.is_contiguous() &&
                  p_ref.scalar_type() == at::kFloat,
              "p_ref must be a contiguous float32 tensor shaped like ref");
  TORCH_CHECK(rs.numel() == rows && rs.is_contiguous() && rs.scalar_type() == at::kFloat,
              "rs must be a contiguous float32 [rows] tensor");
  TORCH_CHECK(cs.numel() == V && cs.is_contiguous() && cs.scalar_type() == at::kFloat,
              "cs must be a contiguous float32 [V] tensor");
  auto opts = acc.options().dtype(at::kFloat);
  auto lse = at::empty({rows}, opts);
  auto dq = at::empty({need_grad ? rows : 0, V}, acc.options().dtype(at::kChar));
  auto ds = at::empty({need_grad ? rows : 0}, opts);
  const int32_t* acc_p = acc.data_ptr<int32_t>();
  const float *rs_p = rs.data_ptr<float>(), *cs_p = cs.data_ptr<float>(),
              *ref_p = ref.data_ptr<float>(), *pr_p = p_ref.data_ptr<float>();
  float *lse_p = lse.data_ptr<float>(), *ds_p = need_grad ? ds.data_ptr<float>() : nullptr;
  int8_t* dq_p = need_grad ? dq.data_ptr<int8_t>() : nullptr;
  at::parallel_for(0, rows, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> buffer(V);
    float* x = buffer.data();
    const int64_t W = Vec::size();
    const int64_t V_vec = V - V % W;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = (t0 + i) % N;
      const int32_t* a_row = acc_p + i * V;
      const float* r_row = ref_p + t * V;
      const float r = rs_p[i];
      // pass 1: X and its max
      const Vec vr(r);
      Vec vmax(-std::numeric_limits<float>::infinity());
      int64_t v = 0;
      for (; v < V_vec; v += W) {
        const Vec q = at::vec::convert<float>(at::vec::Vectorized<int32_t>::loadu(a_row + v));
        const Vec x_v = Vec::loadu(r_row + v) + vr * Vec::loadu(cs_p + v) * q;
        x_v.store(x + v);
        vmax = at::vec::maximum(vmax, x_v);
      }
      float x_max = horizontal_max(vmax);
      for (; v < V; ++v) {
        x[v] = r_row[v] + r * cs_p[v] * static_cast<float>(a_row[v]);
        x_max = (x[v] > x_max || std::isnan(x[v])) ? x[v] : x_max;
      }
      // pass 2: e = exp(X − max) in place, Σe
      const Vec vm(x_max);
      Vec vs(0.f);
      for (v = 0; v < V_vec; v += W) {
        const Vec e = (Vec::loadu(x + v) - vm).exp_u20();
        e.store(x + v);
        vs = vs + e;
      }
      float s = horizontal_sum(vs);
      for (; v < V; ++v) {
        x[v] = std::exp(x[v] - x_max);
        s += x[v];
      }
      lse_p[i] = x_max + std::log(s);
      if (!need_grad) continue;
      // pass 3: Δp = e/s − p* in place, max |Δp|; pass 4: int8
      const float inv_s = 1.f / s;
      const Vec vinv(inv_s);
      const float* p_row = pr_p + t * V;
      Vec vdmax(0.f);
      for (v = 0; v < V_vec; v += W) {
        const Vec d = Vec::loadu(x + v) * vinv - Vec::loadu(p_row + v);
        d.store(x + v);
        vdmax = at::vec::maximum(vdmax, d.abs());
      }
      float d_max = horizontal_max(vdmax);
      for (; v < V; ++v) {
        x[v] = x[v] * inv_s - p_row[v];
        d_max = (std::abs(x[v]) > d_max || std::isnan(x[v])) ? std::abs(x[v]) : d_max;
      }
      if (!std::isfinite(s) || std::isnan(d_max)) d_max = std::numeric_limits<float>::quiet_NaN();
      ds_p[i] = d_max / 127.f;
      const float k = d_max > 0.f ? 127.f / d_max : 0.f;  // |Δp|·k ≤ 127: no saturation
      const Vec vk(k);
      int8_t* q_row = dq_p + i * V;
      for (v = 0; v < V_vec; v += W) {
        const auto qi = at::vec::convert<int32_t>((Vec::loadu(x + v) * vk).round());
        at::vec::convert<int8_t>(qi).store(q_row + v, W);
      }
      for (; v < V; ++v) q_row[v] = static_cast<int8_t>(std::nearbyint(x[v] * k));
    }
  });
  return {lse, dq, ds};
}

}  // namespace

// Called from module.cpp: the kernels are one extension, their sources compiled in parallel.
void register_softmax_rows(pybind11::module_& m) {
  m.def("softmax_rows", &softmax_rows, "softmax statistics of logit rows (see the file header)");
  m.def("delta_softmax_rows", &delta_softmax_rows,
        "int8-difference unembedding rows (see delta_softmax_rows's comment)");
}
