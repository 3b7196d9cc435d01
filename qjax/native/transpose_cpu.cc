// Host-memory transposes of 2-D arrays for checkpoint loading (HF stores linears as (out, in), qjax
// as (in, out)), called through ctypes on numpy buffers (not an XLA kernel). 16-bit values move as
// 8x8 blocks through SSE2 unpack instructions, tile by tile (kTileRows x kTileCols source values),
// so each destination row receives whole cache lines per visit; bfloat16 -> float32 widens in the
// same pass (exact: the bits shifted left by 16). Without SSE2 the same loops run element by
// element. Every kernel also tells whether all source values are finite floats, from their bits in
// the same pass: a value is not finite when (bits & magnitude) >= exponent (its exponent all ones);
// magnitude 0 checks nothing.
#include <cstdint>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace {

// The 16-bit kernel walks tiles of kTileRows source rows x kTileCols source columns: each of the
// tile's kTileCols destination rows receives 2 * kTileRows contiguous bytes per visit, and the
// tile's pages (source rows and destination rows lie a row stride apart, usually one page or more)
// stay within the TLB, which walking whole source rows (thousands of destination rows) would not.
constexpr int64_t kTileRows = 128;
constexpr int64_t kTileCols = 128;

#if defined(__SSE2__)
// out[k] = column k of the 8x8 block of 16-bit values at s (row stride ss, in elements).
inline void Transpose8x8(const uint16_t* s, int64_t ss, __m128i out[8]) {
  __m128i a[8], b[8], c[8];
  for (int i = 0; i < 8; ++i) a[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i * ss));
  for (int i = 0; i < 4; ++i) {
    b[2 * i] = _mm_unpacklo_epi16(a[2 * i], a[2 * i + 1]);
    b[2 * i + 1] = _mm_unpackhi_epi16(a[2 * i], a[2 * i + 1]);
  }
  c[0] = _mm_unpacklo_epi32(b[0], b[2]);
  c[1] = _mm_unpackhi_epi32(b[0], b[2]);
  c[2] = _mm_unpacklo_epi32(b[1], b[3]);
  c[3] = _mm_unpackhi_epi32(b[1], b[3]);
  c[4] = _mm_unpacklo_epi32(b[4], b[6]);
  c[5] = _mm_unpackhi_epi32(b[4], b[6]);
  c[6] = _mm_unpacklo_epi32(b[5], b[7]);
  c[7] = _mm_unpackhi_epi32(b[5], b[7]);
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = _mm_unpacklo_epi64(c[i], c[i + 4]);
    out[2 * i + 1] = _mm_unpackhi_epi64(c[i], c[i + 4]);
  }
}
#endif

// dst[c * ds + r] = src[r * ss + c] (kWiden: as float32 bits from bfloat16 bits), r < rows, c < cols.
// Returns whether every (src & mag) < exp (see the top of the file).
template <typename Out, bool kWiden>
bool Transpose16(const uint16_t* src, int64_t rows, int64_t cols, int64_t ss, Out* dst, int64_t ds, uint16_t mag,
                 uint16_t exp) {
  uint16_t bad = 0;
  auto one = [&](int64_t r, int64_t c) {
    const uint16_t v = src[r * ss + c];
    bad |= static_cast<uint16_t>((v & mag) >= exp);
    dst[c * ds + r] = kWiden ? static_cast<Out>(static_cast<uint32_t>(v) << 16) : static_cast<Out>(v);
  };
  const int64_t rows8 = rows / 8 * 8, cols8 = cols / 8 * 8;
#if defined(__SSE2__)
  // (v & mag) <= 0x7FFF when mag < 0x8000, so the signed 16-bit comparison orders it as unsigned.
  const __m128i magv = _mm_set1_epi16(static_cast<int16_t>(mag & 0x7FFF));
  const __m128i below = _mm_set1_epi16(static_cast<int16_t>(exp - 1));
  __m128i badv = _mm_setzero_si128();
#endif
  for (int64_t r0 = 0; r0 < rows8; r0 += kTileRows) {
    const int64_t r1 = r0 + kTileRows < rows8 ? r0 + kTileRows : rows8;
    for (int64_t c0 = 0; c0 < cols8; c0 += kTileCols) {
      const int64_t c1 = c0 + kTileCols < cols8 ? c0 + kTileCols : cols8;
      for (int64_t c = c0; c < c1; c += 8) {
        for (int64_t r = r0; r < r1; r += 8) {
#if defined(__SSE2__)
          __m128i t[8];
          Transpose8x8(src + r * ss + c, ss, t);
          for (int k = 0; k < 8; ++k) {
            badv = _mm_or_si128(badv, _mm_cmpgt_epi16(_mm_and_si128(t[k], magv), below));
            Out* d = dst + (c + k) * ds + r;
            if constexpr (kWiden) {
              const __m128i zero = _mm_setzero_si128();
              _mm_storeu_si128(reinterpret_cast<__m128i*>(d), _mm_unpacklo_epi16(zero, t[k]));
              _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 4), _mm_unpackhi_epi16(zero, t[k]));
            } else {
              _mm_storeu_si128(reinterpret_cast<__m128i*>(d), t[k]);
            }
          }
#else
          for (int64_t i = r; i < r + 8; ++i)
            for (int64_t j = c; j < c + 8; ++j) one(i, j);
#endif
        }
      }
    }
  }
  for (int64_t r = rows8; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) one(r, c);
  for (int64_t r = 0; r < rows8; ++r)
    for (int64_t c = cols8; c < cols; ++c) one(r, c);
#if defined(__SSE2__)
  if (mag != 0 && _mm_movemask_epi8(badv) != 0) return false;
#endif
  return bad == 0;
}

// dst[c * ds + r] = src[r * ss + c] for 4-byte values, in 16x16 tiles. Returns whether every
// (src & mag) < exp.
bool Transpose32(const uint32_t* src, int64_t rows, int64_t cols, int64_t ss, uint32_t* dst, int64_t ds, uint32_t mag,
                 uint32_t exp) {
  constexpr int64_t kTile = 16;
  uint32_t bad = 0;
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    const int64_t r1 = r0 + kTile < rows ? r0 + kTile : rows;
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const int64_t c1 = c0 + kTile < cols ? c0 + kTile : cols;
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) {
          const uint32_t v = src[r * ss + c];
          bad |= static_cast<uint32_t>((v & mag) >= exp);
          dst[c * ds + r] = v;
        }
    }
  }
  return bad == 0;
}

}  // namespace

extern "C" {

// dst (cols, rows) = src (rows, cols) transposed, 2-byte values (bfloat16, float16). Strides count
// elements between rows; the elements of a row are contiguous in both arrays. Returns 1 when every
// (src & mag) < exp (all finite, for the float format's magnitude and exponent masks), else 0.
int qjax_transpose_2byte(const uint16_t* src, int64_t rows, int64_t cols, int64_t src_stride, uint16_t* dst,
                         int64_t dst_stride, uint16_t mag, uint16_t exp) {
  return Transpose16<uint16_t, false>(src, rows, cols, src_stride, dst, dst_stride, mag, exp);
}

// As qjax_transpose_2byte, bfloat16 in, float32 out.
int qjax_transpose_bf16_to_f32(const uint16_t* src, int64_t rows, int64_t cols, int64_t src_stride,
                               uint32_t* dst, int64_t dst_stride, uint16_t mag, uint16_t exp) {
  return Transpose16<uint32_t, true>(src, rows, cols, src_stride, dst, dst_stride, mag, exp);
}

// As qjax_transpose_2byte, 4-byte values (float32).
int qjax_transpose_4byte(const uint32_t* src, int64_t rows, int64_t cols, int64_t src_stride, uint32_t* dst,
                         int64_t dst_stride, uint32_t mag, uint32_t exp) {
  return Transpose32(src, rows, cols, src_stride, dst, dst_stride, mag, exp);
}

}  // extern "C"
