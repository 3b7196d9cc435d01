// Few-row products with a uniformly quantized kernel, as an XLA FFI handler for the CPU backend:
// decoding with 8- or 4-bit weights reads the packed codes once, never a dequantized copy.
//
//   qjax_qmatvec  x (M, K) f32, codes (ceil(K * bits / 8), N) u8, scale (K / G, N) f32,
//                 zero (K / G, N) f32; attributes bits (8 or 4) and group_rows G
//                 -> y (M, N) = x @ w with w[i, j] = scale[i / G, j] * (q[i, j] - zero[i / G, j])
//
// Codes follow qjax.quant.packing: along the input axis, one byte per code for 8 bits; for 4 bits
// byte k of a column holds code 2k in its low nibble and 2k + 1 in its high one. Per group the
// kernel accumulates sum_i x[i] q[i, j] and sum_i x[i], then adds scale * (that - zero * sum x).
// Tasks are column chunks; each streams its columns of every code row. M <= 8; G divides K; for
// 4 bits G and K are even.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "parallel.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace qjax {

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kMaxRows = 8;
constexpr int64_t kChunk = 128;  // columns per task

struct QProblem {
  const float* x;
  const uint8_t* codes;
  const float* scale;
  const float* zero;
  float* y;
  int64_t rows, k, n, bits, group_rows;
};

// Columns [c0, c1) of y for all M rows of x; `acc` holds M x kChunk partial sums.
template <int M>
void QuantizedColumns(const QProblem& p, int64_t c0, int64_t c1, float* acc) {
  const int64_t width = c1 - c0, vec_end = width - width % kLanes;
  for (int m = 0; m < M; ++m) std::fill(p.y + m * p.n + c0, p.y + m * p.n + c1, 0.0f);
  for (int64_t g0 = 0; g0 < p.k; g0 += p.group_rows) {
    std::fill(acc, acc + M * kChunk, 0.0f);
    float x_sum[M] = {};
    for (int64_t i = g0; i < g0 + p.group_rows; i += p.bits == 8 ? 1 : 2) {
      const uint8_t* row = p.codes + (p.bits == 8 ? i : i / 2) * p.n + c0;
      for (int m = 0; m < M; ++m) {
        const float* xm = p.x + m * p.k;
        float* am = acc + m * kChunk;
        if (p.bits == 8) {
          const VecF xi = Splat(xm[i]);
          x_sum[m] += xm[i];
          for (int64_t j = 0; j < vec_end; j += kLanes) Store(am + j, Load(am + j) + xi * LoadCodes8(row + j));
          for (int64_t j = vec_end; j < width; ++j) am[j] += xm[i] * row[j];
        } else {
          const VecF lo = Splat(xm[i]), hi = Splat(xm[i + 1]);
          x_sum[m] += xm[i] + xm[i + 1];
          for (int64_t j = 0; j < vec_end; j += kLanes) {
            VecF code_lo, code_hi;
            LoadCodes4(row + j, code_lo, code_hi);
            Store(am + j, Load(am + j) + lo * code_lo + hi * code_hi);
          }
          for (int64_t j = vec_end; j < width; ++j) am[j] += xm[i] * (row[j] & 15) + xm[i + 1] * (row[j] >> 4);
        }
      }
    }
    const float* s = p.scale + (g0 / p.group_rows) * p.n + c0;
    const float* z = p.zero + (g0 / p.group_rows) * p.n + c0;
    for (int m = 0; m < M; ++m) {
      float* ym = p.y + m * p.n + c0;
      const float* am = acc + m * kChunk;
      for (int64_t j = 0; j < width; ++j) ym[j] += s[j] * (am[j] - z[j] * x_sum[m]);
    }
  }
}

template <int M>
void RunQuantized(ffi::ThreadPool& pool, const QProblem& p) {
  ParallelFor(pool, (p.n + kChunk - 1) / kChunk, [&p] {
    return [&p, acc = std::vector<float>(M * kChunk)](int64_t t) mutable {
      QuantizedColumns<M>(p, t * kChunk, std::min(p.n, (t + 1) * kChunk), acc.data());
    };
  });
}

ffi::Error QuantizedMatvecImpl(ffi::ThreadPool pool, F32Matrix x, U8Matrix codes, F32Matrix scale, F32Matrix zero,
                               ffi::ResultBuffer<ffi::F32, 2> y, int64_t bits, int64_t group_rows) {
  const int64_t m = x.dimensions()[0], k = x.dimensions()[1], n = codes.dimensions()[1];
  const auto fail = [](const std::string& why) { return ffi::Error::InvalidArgument("qjax_qmatvec: " + why); };
  if (bits != 8 && bits != 4) return fail("bits must be 8 or 4");
  if (m < 1 || m > kMaxRows) return fail("x must have 1 to 8 rows");
  if (group_rows < 1 || k % group_rows != 0 || (bits == 4 && group_rows % 2 != 0)) {
    return fail("group_rows must divide K (and be even for 4 bits)");
  }
  if (codes.dimensions()[0] != k * bits / 8 || scale.dimensions()[0] != k / group_rows ||
      scale.dimensions()[1] != n || zero.dimensions()[0] != k / group_rows || zero.dimensions()[1] != n) {
    return fail("codes, scale or zero shape disagrees with x, bits and group_rows");
  }
  const QProblem p{x.typed_data(), codes.typed_data(), scale.typed_data(), zero.typed_data(), y->typed_data(),
                   m, k, n, bits, group_rows};
  switch (m) {
    case 1: RunQuantized<1>(pool, p); break;
    case 2: RunQuantized<2>(pool, p); break;
    case 3: RunQuantized<3>(pool, p); break;
    case 4: RunQuantized<4>(pool, p); break;
    case 5: RunQuantized<5>(pool, p); break;
    case 6: RunQuantized<6>(pool, p); break;
    case 7: RunQuantized<7>(pool, p); break;
    default: RunQuantized<8>(pool, p); break;
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace qjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(QjaxQuantizedMatvec, qjax::QuantizedMatvecImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<qjax::F32Matrix>()
                                  .Arg<qjax::U8Matrix>()
                                  .Arg<qjax::F32Matrix>()
                                  .Arg<qjax::F32Matrix>()
                                  .Ret<qjax::F32Matrix>()
                                  .Attr<int64_t>("bits")
                                  .Attr<int64_t>("group_rows"));
