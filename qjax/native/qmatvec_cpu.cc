// Few-row products with a uniformly quantized kernel, as an XLA FFI handler for the CPU backend:
// decoding with 8- or 4-bit weights reads the packed codes once, never a dequantized copy.
//
//   qjax_qmatvec  x (M, K) f32, codes (K * bits / 8, N) u8, scale (ceil(K / G), N) f32,
//                 zero (ceil(K / G), N) f32; attributes bits (8 or 4) and group_rows G (the last
//                 group may be partial)
//                 -> y (M, N) = x @ w with w[i, j] = scale[i / G, j] * (q[i, j] - zero[i / G, j])
//
// Codes follow qjax.quant.packing: along the input axis, one byte per code for 8 bits; for 4 bits
// byte k of a column holds code 2k in its low nibble and 2k + 1 in its high one. Per group the
// kernel accumulates sum_i x[i] q[i, j] and sum_i x[i], then adds scale * (that - zero * sum x).
// Tasks are slabs of code rows, each streamed front to back (see RunQuantized). M <= 8; for 4 bits
// G and K are even.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "few_rows.h"
#include "parallel.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace qjax {

namespace ffi = xla::ffi;

namespace {

struct QProblem {
  const float* x;
  const uint8_t* codes;
  const float* scale;
  const float* zero;
  float* y;
  int64_t rows, k, n, bits, group_rows;
};

constexpr int64_t kSlabRows = 64;  // rows per task when a group spans several tasks

// acc[m][0:n] += sum over rows [i0, i1) of x[m][i] * q[i][0:n] (q unpacked from the packed rows);
// i0 and i1 even for 4 bits.
template <int M, int kBits>
void AccumulateCodes(const QProblem& p, int64_t i0, int64_t i1, float* acc) {
  const int64_t n = p.n, n_vec = n - n % kLanes;
  for (int64_t i = i0; i < i1; i += kBits == 8 ? 1 : 2) {
    const uint8_t* row = p.codes + (kBits == 8 ? i : i / 2) * n;
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const float* xm = p.x + m * p.k;
      float* am = acc + m * n;
      const VecF a = Splat(xm[i]);
      if constexpr (kBits == 8) {
        for (int64_t j = 0; j < n_vec; j += kLanes) Store(am + j, Load(am + j) + a * LoadCodes8(row + j));
        for (int64_t j = n_vec; j < n; ++j) am[j] += xm[i] * row[j];
      } else {
        const VecF b = Splat(xm[i + 1]);
        for (int64_t j = 0; j < n_vec; j += kLanes) {
          VecF lo, hi;
          LoadCodes4(row + j, lo, hi);
          Store(am + j, Load(am + j) + a * lo + b * hi);
        }
        for (int64_t j = n_vec; j < n; ++j) am[j] += xm[i] * (row[j] & 15) + xm[i + 1] * (row[j] >> 4);
      }
    }
  }
}

// out[m][0:n] += scale[g] * (acc[m] - zero[g] * sum_{i in group g} x[m][i]).
void ApplyGroupStats(const QProblem& p, int64_t group, const float* acc, float* out) {
  const float* s = p.scale + group * p.n;
  const float* z = p.zero + group * p.n;
  for (int64_t m = 0; m < p.rows; ++m) {
    float x_sum = 0.0f;
    for (int64_t i = group * p.group_rows; i < std::min(p.k, (group + 1) * p.group_rows); ++i) x_sum += p.x[m * p.k + i];
    for (int64_t j = 0; j < p.n; ++j) out[m * p.n + j] += s[j] * (acc[m * p.n + j] - z[j] * x_sum);
  }
}

// Row slabs: whole groups per slab when groups are small (each task applies its groups' stats),
// or kSlabRows-row pieces of one group when kSlabRows divides a larger group (the stats are applied
// once the group's pieces are summed). Each task streams its slab of code rows front to back.
template <int M, int kBits>
void RunQuantized(ffi::ThreadPool& pool, const QProblem& p) {
  const bool split_groups = p.group_rows > kSlabRows && p.group_rows % kSlabRows == 0 && p.k % p.group_rows == 0;
  const int64_t slab_rows = split_groups ? kSlabRows : p.group_rows * std::max<int64_t>(1, kSlabRows / p.group_rows);
  const int64_t slabs = (p.k + slab_rows - 1) / slab_rows, size = M * p.n;
  std::vector<float> partials(slabs * size, 0.0f);
  ParallelFor(pool, slabs, [&] {
    return [&, scratch = std::vector<float>(split_groups ? 0 : size)](int64_t t) mutable {
      const int64_t i0 = t * slab_rows, i1 = std::min(p.k, i0 + slab_rows);
      float* part = partials.data() + t * size;
      if (split_groups) return AccumulateCodes<M, kBits>(p, i0, i1, part);
      for (int64_t g0 = i0; g0 < i1; g0 += p.group_rows) {
        std::fill(scratch.begin(), scratch.end(), 0.0f);
        AccumulateCodes<M, kBits>(p, g0, std::min(p.k, g0 + p.group_rows), scratch.data());
        ApplyGroupStats(p, g0 / p.group_rows, scratch.data(), part);
      }
    };
  });
  std::fill(p.y, p.y + size, 0.0f);
  if (!split_groups) {
    for (int64_t t = 0; t < slabs; ++t) {
      for (int64_t j = 0; j < size; ++j) p.y[j] += partials[t * size + j];
    }
    return;
  }
  const int64_t per_group = p.group_rows / slab_rows;
  for (int64_t g = 0; g < p.k / p.group_rows; ++g) {
    float* acc = partials.data() + g * per_group * size;  // the group's first piece collects the rest
    for (int64_t t = 1; t < per_group; ++t) {
      for (int64_t j = 0; j < size; ++j) acc[j] += acc[t * size + j];
    }
    ApplyGroupStats(p, g, acc, p.y);
  }
}

template <int M>
struct QuantizedKernel {
  static void Run(ffi::ThreadPool& pool, const QProblem& p) {
    if (p.bits == 8) {
      RunQuantized<M, 8>(pool, p);
    } else {
      RunQuantized<M, 4>(pool, p);
    }
  }
};

ffi::Error QuantizedMatvecImpl(ffi::ThreadPool pool, F32Matrix x, U8Matrix codes, F32Matrix scale, F32Matrix zero,
                               ffi::ResultBuffer<ffi::F32, 2> y, int64_t bits, int64_t group_rows) {
  const int64_t m = x.dimensions()[0], k = x.dimensions()[1], n = codes.dimensions()[1];
  const auto fail = [](const std::string& why) { return ffi::Error::InvalidArgument("qjax_qmatvec: " + why); };
  if (bits != 8 && bits != 4) return fail("bits must be 8 or 4");
  if (auto error = CheckRows(m, "qjax_qmatvec"); error.failure()) return error;
  if (group_rows < 1 || (bits == 4 && (group_rows % 2 != 0 || k % 2 != 0))) {
    return fail("group_rows must be positive (and K and group_rows even for 4 bits)");
  }
  const int64_t groups = (k + group_rows - 1) / group_rows;
  if (codes.dimensions()[0] != k * bits / 8 || scale.dimensions()[0] != groups || scale.dimensions()[1] != n ||
      zero.dimensions()[0] != groups || zero.dimensions()[1] != n) {
    return fail("codes, scale or zero shape disagrees with x, bits and group_rows");
  }
  const QProblem p{x.typed_data(), codes.typed_data(), scale.typed_data(), zero.typed_data(), y->typed_data(),
                   m, k, n, bits, group_rows};
  DispatchRows<QuantizedKernel>(m, pool, p);
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
