// Many-row float32 products (prefill, scoring, calibration) as XLA FFI handlers for the CPU
// backend, computed by a BLAS library's cblas_sgemm, which `qjax.native.blas` loads and hands over
// (qjax_native_set_sgemm) before the handlers are registered: Intel MKL when installed, else the
// OpenBLAS of the `scipy-openblas32` wheel. Matmuls are most of a long prefill; to compare these
// handlers with XLA:CPU's dots, run benchmarks/prefill_speed.py with QJAX_BLAS=mkl|openblas|none.
//
//   qjax_gemm     x (M, K), w_1 (K, N_1), ..., w_n (K, N_n) -> y_i = x @ w_i (M, N_i)
//                 w_i: linear kernels (in, out) reading the same input (q/k/v, gate/up), each
//                 multiplied in place: no concatenated copy of the weights per call
//   qjax_gemm_nt  x (M, K) @ w (N, K)^T -> (M, N)     w: a tied embedding (vocab, hidden)
//
// The BLAS runs single-threaded inside each task (the loader sets that); the tasks (row blocks of
// x, for every product) are shared over XLA's intra-op pool, so no second thread pool competes
// with XLA's for the cores.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace qjax {

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kMinBlockRows = 64;  // below this, sgemm's packing of w dominates a block

// cblas_sgemm with 32-bit integers (LP64), and the CBLAS enum values it takes.
using Sgemm = void (*)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                       int lda, const float* b, int ldb, float beta, float* c, int ldc);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
std::atomic<Sgemm> sgemm{nullptr};

// One product of a call: y (M, n) = x @ w, with w (K, n) (`transposed`: w is (n, K)).
struct GemmProduct {
  const float* w;
  int64_t n;
  float* y;
  bool transposed;
};

// y_i[rows] = x[rows] @ w_i for each row block of x and each product, as one pool of tasks. Every
// product's rows are cut into about two blocks per thread (at least kMinBlockRows rows each), so a
// helper that wakes late still finds work.
void Gemm(ffi::ThreadPool& pool, Sgemm blas, const float* x, int64_t m, int64_t k,
          const std::vector<GemmProduct>& products) {
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  const int64_t blocks = std::clamp<int64_t>(m / kMinBlockRows, 1, 2 * threads);
  const int64_t block_rows = (m + blocks - 1) / blocks;
  ParallelFor(pool, blocks * static_cast<int64_t>(products.size()), [&] {
    return [&](int64_t t) {
      const GemmProduct& p = products[t / blocks];
      const int64_t r0 = (t % blocks) * block_rows;
      const int64_t rows = std::min(m, r0 + block_rows) - r0;
      if (rows <= 0) return;
      blas(kRowMajor, kNoTrans, p.transposed ? kTrans : kNoTrans, rows, p.n, k, 1.0f, x + r0 * k, k, p.w,
           p.transposed ? k : p.n, 0.0f, p.y + r0 * p.n, p.n);
    };
  });
}

bool FitsBlasInt(int64_t value) { return value <= std::numeric_limits<int>::max(); }

ffi::Error NoBlas(const char* name) {
  return ffi::Error::Internal(std::string(name) + ": no BLAS library was loaded (qjax.native.blas)");
}

ffi::Error GemmImpl(ffi::ThreadPool pool, F32Matrix x, ffi::RemainingArgs weights, ffi::RemainingRets outputs) {
  const Sgemm blas = sgemm.load();
  if (blas == nullptr) return NoBlas("qjax_gemm");
  const int64_t m = x.dimensions()[0], k = x.dimensions()[1];
  if (weights.size() != outputs.size() || weights.size() == 0) {
    return ffi::Error::InvalidArgument("qjax_gemm: needs one output per weight, and at least one weight");
  }
  std::vector<GemmProduct> products;
  for (size_t i = 0; i < weights.size(); ++i) {
    auto w = weights.get<F32Matrix>(i);
    auto y = outputs.get<F32Matrix>(i);
    if (w.has_error() || y.has_error()) return ffi::Error::InvalidArgument("qjax_gemm: operands must be f32 matrices");
    const int64_t n = w->dimensions()[1];
    if (w->dimensions()[0] != k || (*y)->dimensions()[0] != m || (*y)->dimensions()[1] != n) {
      return ffi::Error::InvalidArgument("qjax_gemm: x and w disagree on K");
    }
    if (!FitsBlasInt(m * k) || !FitsBlasInt(k * n) || !FitsBlasInt(m * n)) {
      return ffi::Error::InvalidArgument("qjax_gemm: operands too large for 32-bit BLAS indices");
    }
    products.push_back(GemmProduct{w->typed_data(), n, (*y)->typed_data(), false});
  }
  Gemm(pool, blas, x.typed_data(), m, k, products);
  return ffi::Error::Success();
}

ffi::Error GemmNtImpl(ffi::ThreadPool pool, F32Matrix x, F32Matrix w, ffi::ResultBuffer<ffi::F32, 2> y) {
  const Sgemm blas = sgemm.load();
  if (blas == nullptr) return NoBlas("qjax_gemm_nt");
  const int64_t m = x.dimensions()[0], k = x.dimensions()[1], n = w.dimensions()[0];
  if (w.dimensions()[1] != k) return ffi::Error::InvalidArgument("qjax_gemm_nt: x and w disagree on K");
  if (!FitsBlasInt(m * k) || !FitsBlasInt(k * n) || !FitsBlasInt(m * n)) {
    return ffi::Error::InvalidArgument("qjax_gemm_nt: operands too large for 32-bit BLAS indices");
  }
  Gemm(pool, blas, x.typed_data(), m, k, {GemmProduct{w.typed_data(), n, y->typed_data(), true}});
  return ffi::Error::Success();
}

}  // namespace
}  // namespace qjax

// Hands the kernels a cblas_sgemm (LP64, running single-threaded); called once, when qjax.native
// loads the library, with the function `qjax.native.blas` found.
extern "C" void qjax_native_set_sgemm(void* function) {
  qjax::sgemm.store(reinterpret_cast<qjax::Sgemm>(function));
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(QjaxGemm, qjax::GemmImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<qjax::F32Matrix>()
                                  .RemainingArgs()
                                  .RemainingRets());

XLA_FFI_DEFINE_HANDLER_SYMBOL(QjaxGemmNt, qjax::GemmNtImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<qjax::F32Matrix>()
                                  .Arg<qjax::F32Matrix>()
                                  .Ret<qjax::F32Matrix>());
