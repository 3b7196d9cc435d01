// Fused causal softmax attention for a forward without KV cache (a prefill or a scoring pass), as an
// XLA FFI handler for the CPU backend. One task is (batch row b, query head h, block of kQueryBlock
// query positions); tasks run on XLA's intra-op thread pool. Each task walks the key blocks up to
// its last query with an online softmax (running max m, normaliser l, unnormalised output O), so
// the (T, T) score matrix is never formed and key blocks after the diagonal are never touched.
//
// Operands (all row-major, float32 unless stated):
//   q     (B, T, H, D)                 queries (RoPE applied, not yet scaled by D^-1/2)
//   kp    (B, KVH, T / W, D, W)        keys, packed: strip s holds K[s*W:(s+1)*W]^T, W = kStrip
//   vt    (B, KVH, T, D)               values, KV-head major
//   mask  (B, T, T) bool               True where query t may attend key s; must be False for
//                                      every s > t (causal), which is what lets blocks be skipped
//   tiles (B, T / 64, T / 64) uint8    the mask per 64 x 64 tile: 0 no pair allowed (its scores are
//                                      not computed), 1 every pair allowed (the mask is not read),
//                                      2 mixed (the mask is read)
//   out   (B, T, H, D)                 softmax(q k^T / sqrt(D), masked) v, query head h reading KV
//                                      head h / (H / KVH)
// Requires T % kQueryBlock == 0 and D % kLanes == 0 (the Python wrapper pads T). Masked scores are
// set to kMaskValue (finite), so a query with no allowed key gets a finite (uniform) average.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "parallel.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace qjax {
namespace {

namespace ffi = xla::ffi;

constexpr int kStrip = kLanes * kTileVecs;  // keys per score tile (64 with AVX-512)
constexpr int kQueryBlock = 64;             // query rows per task
constexpr int kKeyBlock = 256;              // keys per online-softmax step
constexpr int kRowTile = 6;                 // query rows per register tile (64 = 10 x 6 + 4)
constexpr float kMaskValue = -1e30f;
constexpr int64_t kMaskTile = 64;  // side of the (query, key) tiles that `tiles` classifies
constexpr uint8_t kNoneAllowed = 0, kMixedAllowed = 2;  // tile states (1: every pair allowed)
static_assert(kQueryBlock == kMaskTile && kMaskTile % kStrip == 0 && kKeyBlock % kQueryBlock == 0,
              "block sizes must nest");

struct Problem {
  const float* q;
  const float* kp;
  const float* vt;
  const uint8_t* mask;
  const uint8_t* tiles;
  float* out;
  int64_t batch, seq, heads, kv_heads, head_dim;
  float scale;
};

// scores[r][0:kStrip] = q_row(r) . K[strip]^T * scale for R query rows; with kMixed, kMaskValue
// where allowed[r][j] is 0 (without, every pair is allowed). block_max[r] (one vector per row)
// takes the lane-wise max. q rows are `q_stride` floats apart, `k_strip` is the packed
// (D, kStrip) strip, allowed rows are `mask_stride` bytes apart, scores rows `s_stride` floats.
template <int R, bool kMixed>
inline void ScoreTile(const float* q, int64_t q_stride, const float* k_strip, int64_t head_dim, float scale,
                      const uint8_t* allowed, int64_t mask_stride, float* scores, int64_t s_stride,
                      VecF* block_max) {
  VecF acc[R][kTileVecs] = {};
  for (int64_t d = 0; d < head_dim; ++d) {
    const float* k_row = k_strip + d * kStrip;
    VecF k[kTileVecs];
#pragma GCC unroll 4
    for (int c = 0; c < kTileVecs; ++c) k[c] = Load(k_row + c * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const VecF qb = Splat(q[r * q_stride + d]);
#pragma GCC unroll 4
      for (int c = 0; c < kTileVecs; ++c) acc[r][c] += qb * k[c];
    }
  }
  const VecF masked = Splat(kMaskValue);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    VecF m = block_max[r];
#pragma GCC unroll 4
    for (int c = 0; c < kTileVecs; ++c) {
      VecF x = acc[r][c] * scale;
      if constexpr (kMixed) x = LoadFlags(allowed + r * mask_stride + c * kLanes) ? x : masked;
      Store(scores + r * s_stride + c * kLanes, x);
      m = x > m ? x : m;
    }
    block_max[r] = m;
  }
}

inline void ScoreRows(int64_t rows, bool mixed, const float* q, int64_t q_stride, const float* k_strip,
                      int64_t head_dim, float scale, const uint8_t* allowed, int64_t mask_stride, float* scores,
                      VecF* block_max) {
  constexpr int kLast = kQueryBlock % kRowTile;
  if (rows == kRowTile) {
    if (mixed) return ScoreTile<kRowTile, true>(q, q_stride, k_strip, head_dim, scale, allowed, mask_stride, scores,
                                                kKeyBlock, block_max);
    return ScoreTile<kRowTile, false>(q, q_stride, k_strip, head_dim, scale, allowed, mask_stride, scores, kKeyBlock,
                                      block_max);
  }
  if (mixed) return ScoreTile<kLast, true>(q, q_stride, k_strip, head_dim, scale, allowed, mask_stride, scores,
                                           kKeyBlock, block_max);
  ScoreTile<kLast, false>(q, q_stride, k_strip, head_dim, scale, allowed, mask_stride, scores, kKeyBlock, block_max);
}

// o[r][0:NV*kLanes] = o[r] * correction[r] + sum_j p[r][j] v[j] over `num_keys` keys, R rows.
template <int R, int NV>
inline void ValueTile(const float* p, int64_t p_stride, const float* v, int64_t v_stride, int64_t num_keys,
                      const float* correction, float* o, int64_t o_stride) {
  VecF acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const VecF c = Splat(correction[r]);
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) acc[r][n] = Load(o + r * o_stride + n * kLanes) * c;
  }
  for (int64_t j = 0; j < num_keys; ++j) {
    VecF vv[NV];
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) vv[n] = Load(v + j * v_stride + n * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const VecF pb = Splat(p[r * p_stride + j]);
#pragma GCC unroll 4
      for (int n = 0; n < NV; ++n) acc[r][n] += pb * vv[n];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) Store(o + r * o_stride + n * kLanes, acc[r][n]);
  }
}

template <int R>
inline void ValueRows(const float* p, const float* v, int64_t num_keys, int64_t head_dim,
                      const float* correction, float* o) {
  for (int64_t d0 = 0; d0 < head_dim; d0 += kStrip) {
    const int64_t vecs = std::min<int64_t>(kTileVecs, (head_dim - d0) / kLanes);
    const float* vd = v + d0;
    float* od = o + d0;
    if (vecs == kTileVecs) {
      ValueTile<R, kTileVecs>(p, kKeyBlock, vd, head_dim, num_keys, correction, od, head_dim);
    } else if (vecs == 1) {
      ValueTile<R, 1>(p, kKeyBlock, vd, head_dim, num_keys, correction, od, head_dim);
    } else if constexpr (kTileVecs > 2) {
      if (vecs == 2) {
        ValueTile<R, 2>(p, kKeyBlock, vd, head_dim, num_keys, correction, od, head_dim);
      } else {
        ValueTile<R, 3>(p, kKeyBlock, vd, head_dim, num_keys, correction, od, head_dim);
      }
    }
  }
}

// Per-worker scratch: one (kQueryBlock, kKeyBlock) score tile and the running softmax state.
struct Scratch {
  explicit Scratch(int64_t head_dim)
      : scores(kQueryBlock * kKeyBlock), out(kQueryBlock * head_dim), row_max(kQueryBlock),
        row_sum(kQueryBlock), correction(kQueryBlock), ones(kQueryBlock, 1.0f), block_max(kQueryBlock) {}
  std::vector<float> scores, out, row_max, row_sum, correction, ones;
  std::vector<VecF> block_max;  // per row: lane-wise max of the current key block's scores
};

// Turns one row of `num_keys` masked, scaled scores into exp(score - new max) in place, where the
// new max takes in `block_max` (the row's lane-wise max over these scores), and updates the row's
// running max and sum; returns the factor exp(old max - new max) for its accumulated output.
inline float SoftmaxRow(float* s, int64_t num_keys, VecF block_max, float& row_max, float& row_sum) {
  const float new_max = std::max(row_max, ReduceMax(block_max));
  const float correction = std::exp(row_max - new_max);
  const VecF shift = Splat(new_max);
  VecF vsum = {};
  for (int64_t j = 0; j < num_keys; j += kLanes) {
    const VecF p = ExpNonPositive(Load(s + j) - shift);
    Store(s + j, p);
    vsum += p;
  }
  row_max = new_max;
  row_sum = row_sum * correction + ReduceSum(vsum);
  return correction;
}

void RunTask(const Problem& pb, int64_t task, Scratch& scratch) {
  const int64_t num_blocks = pb.seq / kQueryBlock;
  const int64_t rows_per_block = pb.batch * pb.heads;
  // Largest blocks (most keys) first, so the last tasks to be claimed are the short ones.
  const int64_t block = num_blocks - 1 - task / rows_per_block;
  const int64_t b = (task % rows_per_block) / pb.heads;
  const int64_t h = task % pb.heads;
  const int64_t kvh = h / (pb.heads / pb.kv_heads);
  const int64_t d = pb.head_dim;
  const int64_t first = block * kQueryBlock;
  const int64_t key_end = first + kQueryBlock;
  const int64_t q_stride = pb.heads * d;
  const float* q = pb.q + ((b * pb.seq + first) * pb.heads + h) * d;
  const float* kp = pb.kp + (b * pb.kv_heads + kvh) * pb.seq * d;
  const float* vt = pb.vt + (b * pb.kv_heads + kvh) * pb.seq * d;
  const int64_t num_tiles = pb.seq / kMaskTile;
  const uint8_t* tile_states = pb.tiles + (b * num_tiles + block) * num_tiles;

  float* scores = scratch.scores.data();
  float* o = scratch.out.data();
  std::fill(scratch.out.begin(), scratch.out.end(), 0.0f);
  std::fill(scratch.row_max.begin(), scratch.row_max.end(), -std::numeric_limits<float>::infinity());
  std::fill(scratch.row_sum.begin(), scratch.row_sum.end(), 0.0f);

  for (int64_t k0 = 0; k0 < key_end; k0 += kKeyBlock) {
    const int64_t num_keys = std::min<int64_t>(kKeyBlock, key_end - k0);
    std::fill(scratch.block_max.begin(), scratch.block_max.end(), Splat(kMaskValue));
    // Strip-major: each packed K strip stays in L1 while every row tile of the block reads it.
    for (int64_t s = 0; s < num_keys; s += kStrip) {
      const uint8_t state = tile_states[(k0 + s) / kMaskTile];
      if (state == kNoneAllowed) {
        for (int64_t r = 0; r < kQueryBlock; ++r) std::fill_n(scores + r * kKeyBlock + s, kStrip, kMaskValue);
        continue;
      }
      const float* strip = kp + (k0 + s) * d;
      for (int64_t r0 = 0; r0 < kQueryBlock; r0 += kRowTile) {
        ScoreRows(std::min<int64_t>(kRowTile, kQueryBlock - r0), state == kMixedAllowed, q + r0 * q_stride,
                  q_stride, strip, d, pb.scale, pb.mask + (b * pb.seq + first + r0) * pb.seq + k0 + s, pb.seq,
                  scores + r0 * kKeyBlock + s, scratch.block_max.data() + r0);
      }
    }
    for (int64_t r = 0; r < kQueryBlock; ++r) {
      scratch.correction[r] = SoftmaxRow(scores + r * kKeyBlock, num_keys, scratch.block_max[r],
                                         scratch.row_max[r], scratch.row_sum[r]);
    }
    // Likewise kStrip keys of V at a time; the softmax correction rescales O on the first only.
    for (int64_t j = 0; j < num_keys; j += kStrip) {
      const float* correction = j == 0 ? scratch.correction.data() : scratch.ones.data();
      const float* v = vt + (k0 + j) * d;
      for (int64_t r0 = 0; r0 < kQueryBlock; r0 += kRowTile) {
        const float* p = scores + r0 * kKeyBlock + j;
        if (r0 + kRowTile <= kQueryBlock) {
          ValueRows<kRowTile>(p, v, kStrip, d, correction + r0, o + r0 * d);
        } else {
          ValueRows<kQueryBlock % kRowTile>(p, v, kStrip, d, correction + r0, o + r0 * d);
        }
      }
    }
  }
  for (int64_t r = 0; r < kQueryBlock; ++r) {
    const float inv = 1.0f / scratch.row_sum[r];
    float* dst = pb.out + ((b * pb.seq + first + r) * pb.heads + h) * d;
    for (int64_t j = 0; j < d; ++j) dst[j] = o[r * d + j] * inv;
  }
}

ffi::Error CausalAttentionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> kp,
                               ffi::Buffer<ffi::F32> vt, ffi::Buffer<ffi::PRED> mask,
                               ffi::Buffer<ffi::U8> tiles, ffi::ResultBuffer<ffi::F32> out) {
  const auto qd = q.dimensions();
  const auto kd = kp.dimensions();
  const auto td = tiles.dimensions();
  if (qd.size() != 4 || kd.size() != 5 || vt.dimensions().size() != 4 || mask.dimensions().size() != 3 ||
      td.size() != 3) {
    return ffi::Error::InvalidArgument("qjax_causal_attention: operand ranks must be 4, 5, 4, 3, 3");
  }
  const int64_t batch = qd[0], seq = qd[1], heads = qd[2], head_dim = qd[3], kv_heads = kd[1];
  if (seq % kQueryBlock != 0 || head_dim % kLanes != 0 || kv_heads <= 0 || heads % kv_heads != 0 ||
      kd[0] != batch || kd[2] * kd[4] != seq || kd[3] != head_dim || kd[4] != kStrip || td[0] != batch ||
      td[1] != seq / kMaskTile || td[2] != seq / kMaskTile) {
    return ffi::Error::InvalidArgument("qjax_causal_attention: operand shapes do not match the layout");
  }
  const Problem problem{q.typed_data(), kp.typed_data(), vt.typed_data(),
                        reinterpret_cast<const uint8_t*>(mask.typed_data()), tiles.typed_data(), out->typed_data(),
                        batch, seq, heads, kv_heads, head_dim, 1.0f / std::sqrt(static_cast<float>(head_dim))};
  ParallelFor(pool, batch * heads * (seq / kQueryBlock), [&problem] {
    return [&problem, scratch = std::make_shared<Scratch>(problem.head_dim)](int64_t task) {
      RunTask(problem, task, *scratch);
    };
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace qjax

extern "C" int qjax_native_strip_width() { return qjax::kStrip; }
extern "C" int qjax_native_lanes() { return qjax::kLanes; }

XLA_FFI_DEFINE_HANDLER_SYMBOL(QjaxCausalAttention, qjax::CausalAttentionImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::PRED>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::U8>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>());
