// Skinny float32 products for batch-1 (or few-row) decoding, as XLA FFI handlers for the CPU
// backend. A decode step is bound by reading every weight once; these kernels stream each weight
// matrix front to back, split into contiguous slabs across XLA's intra-op thread pool, so the
// hardware prefetchers see one forward stream per thread.
//
//   qjax_matvec     x (M, K), w_1 (K, N_1), ..., w_n (K, N_n) -> y_i = x @ w_i (M, N_i)
//                   w_i: linear kernels (in, out) reading the same input (q/k/v, gate/up)
//   qjax_matvec_nt  x (M, K) @ w (N, K)^T -> (M, N)     w: a tied embedding (vocab, hidden)
// M is small (at most kMaxRows); K and N are arbitrary (scalar tails handle the remainders).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "few_rows.h"
#include "parallel.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace qjax {

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kSlabRows = 64;  // weight rows per task: small enough to balance two threads

// partial[m][0:n] = sum over rows k in [k0, k1) of x[m][k] * w[k][0:n], M rows of x.
template <int M>
void AccumulateRows(const float* x, int64_t k_total, const float* w, int64_t n, int64_t k0, int64_t k1,
                    float* partial) {
  std::fill(partial, partial + M * n, 0.0f);
  const int64_t n_vec = n - n % kLanes;
  int64_t k = k0;
  for (; k + 4 <= k1; k += 4) {
    const float* w0 = w + k * n;
    const float* w1 = w0 + n;
    const float* w2 = w1 + n;
    const float* w3 = w2 + n;
    for (int m = 0; m < M; ++m) {
      const float* xm = x + m * k_total + k;
      const VecF a = Splat(xm[0]), b = Splat(xm[1]), c = Splat(xm[2]), d = Splat(xm[3]);
      float* acc = partial + m * n;
      for (int64_t j = 0; j < n_vec; j += kLanes) {
        Store(acc + j, Load(acc + j) + a * Load(w0 + j) + b * Load(w1 + j) + c * Load(w2 + j) + d * Load(w3 + j));
      }
      for (int64_t j = n_vec; j < n; ++j) acc[j] += xm[0] * w0[j] + xm[1] * w1[j] + xm[2] * w2[j] + xm[3] * w3[j];
    }
  }
  for (; k < k1; ++k) {
    const float* wk = w + k * n;
    for (int m = 0; m < M; ++m) {
      const float xk = x[m * k_total + k];
      float* acc = partial + m * n;
      for (int64_t j = 0; j < n; ++j) acc[j] += xk * wk[j];
    }
  }
}

// One product of a multi-weight call: y (M, n) = x @ w (K, n), split into slabs of kSlabRows rows.
struct Product {
  const float* w;
  int64_t n;
  float* y;
};

// y_i = x @ w_i for every product, all slabs of all weights as one pool of tasks (one wake-up of
// the helpers per call, however many weights share x).
template <int M>
void MatvecRows(ffi::ThreadPool& pool, const float* x, int64_t k, const std::vector<Product>& products) {
  const int64_t slabs = (k + kSlabRows - 1) / kSlabRows;
  std::vector<int64_t> offsets;  // partials of product i start at offsets[i]
  int64_t total = 0;
  for (size_t i = 0; i < products.size(); ++i) {
    offsets.push_back(total);
    total += slabs * M * products[i].n;
  }
  std::vector<float> partials(total);
  ParallelFor(pool, slabs * static_cast<int64_t>(products.size()), [&] {
    return [&](int64_t t) {
      const Product& p = products[t / slabs];
      const int64_t s = t % slabs;
      AccumulateRows<M>(x, k, p.w, p.n, s * kSlabRows, std::min(k, (s + 1) * kSlabRows),
                        partials.data() + offsets[t / slabs] + s * M * p.n);
    };
  });
  for (size_t i = 0; i < products.size(); ++i) {
    const int64_t size = M * products[i].n;
    const float* part = partials.data() + offsets[i];
    std::copy(part, part + size, products[i].y);
    for (int64_t s = 1; s < slabs; ++s) {
      for (int64_t j = 0; j < size; ++j) products[i].y[j] += part[s * size + j];
    }
  }
}

// y[m][r] = dot(x[m], w[r]) for rows r in [r0, r1) of w (N, K).
template <int M>
void DotRows(const float* x, const float* w, int64_t k, int64_t r0, int64_t r1, float* y, int64_t n) {
  const int64_t k_vec = k - k % kLanes;
  for (int64_t r = r0; r < r1; ++r) {
    const float* wr = w + r * k;
    VecF acc[M] = {};
    for (int64_t j = 0; j < k_vec; j += kLanes) {
      const VecF wv = Load(wr + j);
      for (int m = 0; m < M; ++m) acc[m] += Load(x + m * k + j) * wv;
    }
    for (int m = 0; m < M; ++m) {
      float sum = ReduceSum(acc[m]);
      for (int64_t j = k_vec; j < k; ++j) sum += x[m * k + j] * wr[j];
      y[m * n + r] = sum;
    }
  }
}

template <int M>
void MatvecNtRows(ffi::ThreadPool& pool, const float* x, int64_t k, const float* w, int64_t n, float* y) {
  constexpr int64_t kRowsPerTask = 512;
  ParallelFor(pool, (n + kRowsPerTask - 1) / kRowsPerTask, [&] {
    return [&](int64_t t) { DotRows<M>(x, w, k, t * kRowsPerTask, std::min(n, (t + 1) * kRowsPerTask), y, n); };
  });
}

template <int M>
struct MatvecKernel {
  static void Run(ffi::ThreadPool& pool, const float* x, int64_t k, const std::vector<Product>& products) {
    MatvecRows<M>(pool, x, k, products);
  }
};

template <int M>
struct MatvecNtKernel {
  static void Run(ffi::ThreadPool& pool, const float* x, int64_t k, const float* w, int64_t n, float* y) {
    MatvecNtRows<M>(pool, x, k, w, n, y);
  }
};

ffi::Error MatvecImpl(ffi::ThreadPool pool, F32Matrix x, ffi::RemainingArgs weights, ffi::RemainingRets outputs) {
  const int64_t m = x.dimensions()[0], k = x.dimensions()[1];
  if (auto error = CheckRows(m, "qjax_matvec"); error.failure()) return error;
  if (weights.size() != outputs.size() || weights.size() == 0) {
    return ffi::Error::InvalidArgument("qjax_matvec: needs one output per weight, and at least one weight");
  }
  std::vector<Product> products;
  for (size_t i = 0; i < weights.size(); ++i) {
    auto w = weights.get<F32Matrix>(i);
    auto y = outputs.get<F32Matrix>(i);
    if (w.has_error() || y.has_error()) return ffi::Error::InvalidArgument("qjax_matvec: operands must be f32 matrices");
    const int64_t n = w->dimensions()[1];
    if (w->dimensions()[0] != k || (*y)->dimensions()[0] != m || (*y)->dimensions()[1] != n) {
      return ffi::Error::InvalidArgument("qjax_matvec: x and w disagree on K");
    }
    products.push_back(Product{w->typed_data(), n, (*y)->typed_data()});
  }
  DispatchRows<MatvecKernel>(m, pool, x.typed_data(), k, products);
  return ffi::Error::Success();
}

ffi::Error MatvecNtImpl(ffi::ThreadPool pool, F32Matrix x, F32Matrix w, ffi::ResultBuffer<ffi::F32, 2> y) {
  const int64_t m = x.dimensions()[0], k = x.dimensions()[1], n = w.dimensions()[0];
  if (w.dimensions()[1] != k) return ffi::Error::InvalidArgument("qjax_matvec_nt: x and w disagree on K");
  if (auto error = CheckRows(m, "qjax_matvec_nt"); error.failure()) return error;
  DispatchRows<MatvecNtKernel>(m, pool, x.typed_data(), k, w.typed_data(), n, y->typed_data());
  return ffi::Error::Success();
}

}  // namespace
}  // namespace qjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(QjaxMatvec, qjax::MatvecImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<qjax::F32Matrix>()
                                  .RemainingArgs()
                                  .RemainingRets());

XLA_FFI_DEFINE_HANDLER_SYMBOL(QjaxMatvecNt, qjax::MatvecNtImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<qjax::F32Matrix>()
                                  .Arg<qjax::F32Matrix>()
                                  .Ret<qjax::F32Matrix>());
