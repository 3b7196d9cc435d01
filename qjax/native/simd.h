// Portable SIMD helpers for qjax's CPU kernels: GCC/Clang vector extensions sized to the widest
// float vector the build target has (16 lanes with AVX-512, else 8), so one source compiles to
// AVX-512, AVX2 or whatever -march=native offers.
#ifndef QJAX_NATIVE_SIMD_H_
#define QJAX_NATIVE_SIMD_H_

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>

namespace qjax {

#if defined(__AVX512F__)
inline constexpr int kLanes = 16;
inline constexpr int kTileVecs = 4;  // vectors per register tile row: 32 zmm registers
#else
inline constexpr int kLanes = 8;
inline constexpr int kTileVecs = 2;  // 16 ymm registers
#endif

typedef float VecF __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(kLanes * sizeof(int32_t))));
typedef uint8_t VecB __attribute__((vector_size(kLanes)));

inline VecF Load(const float* p) {
  VecF v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void Store(float* p, VecF v) { std::memcpy(p, &v, sizeof(v)); }

// Every lane x: one broadcast instruction (VecF{} + x would cost an add, as 0 + x is not x for -0).
inline VecF Splat(float x) {
#if defined(__AVX512F__)
  return reinterpret_cast<VecF>(_mm512_set1_ps(x));
#elif defined(__AVX__)
  return reinterpret_cast<VecF>(_mm256_set1_ps(x));
#else
  VecF v;
  for (int i = 0; i < kLanes; ++i) v[i] = x;
  return v;
#endif
}

// Lanes of `p` (kLanes bytes, 0 or 1) as an all-ones / all-zeros int mask.
inline VecI LoadFlags(const uint8_t* p) {
  VecB b;
  std::memcpy(&b, p, sizeof(b));
  return __builtin_convertvector(b, VecI) != 0;
}

// kLanes 8-bit codes at p as floats.
inline VecF LoadCodes8(const uint8_t* p) {
#if defined(__AVX512F__)
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return reinterpret_cast<VecF>(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)));
#elif defined(__AVX2__)
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return reinterpret_cast<VecF>(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)));
#else
  VecF v;
  for (int i = 0; i < kLanes; ++i) v[i] = p[i];
  return v;
#endif
}

// kLanes bytes at p, each holding two 4-bit codes: low nibbles into lo, high nibbles into hi.
inline void LoadCodes4(const uint8_t* p, VecF& lo, VecF& hi) {
#if defined(__AVX512F__)
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i nibble = _mm_set1_epi8(15);
  lo = reinterpret_cast<VecF>(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b, nibble))));
  hi = reinterpret_cast<VecF>(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), nibble))));
#elif defined(__AVX2__)
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i nibble = _mm_set1_epi8(15);
  lo = reinterpret_cast<VecF>(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_and_si128(b, nibble))));
  hi = reinterpret_cast<VecF>(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), nibble))));
#else
  for (int i = 0; i < kLanes; ++i) {
    lo[i] = p[i] & 15;
    hi[i] = p[i] >> 4;
  }
#endif
}

inline float ReduceMax(VecF v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

inline float ReduceSum(VecF v) {
  float s = 0.0f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

// exp(x) for x <= 0 to float32 rounding: x = n ln2 + r with |r| <= ln2/2, exp(r) by its degree-7
// Taylor polynomial (truncation error < 1e-8 relative), times 2^n. Inputs below -87 give
// exp(-87) ~ 1.6e-38 (a normal float), so masked scores contribute nothing measurable.
inline VecF ExpNonPositive(VecF x) {
  x = x < -87.0f ? Splat(-87.0f) : x;
#if defined(__AVX512F__)
  const VecF n = reinterpret_cast<VecF>(_mm512_roundscale_ps(reinterpret_cast<__m512>(x * 1.44269504088896341f),
                                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  const VecF round_magic = Splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const VecF n = (x * 1.44269504088896341f + round_magic) - round_magic;
#endif
  VecF r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187e-06f;
  VecF p = Splat(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
#if defined(__AVX512F__)
  return reinterpret_cast<VecF>(_mm512_scalef_ps(reinterpret_cast<__m512>(p), reinterpret_cast<__m512>(n)));
#else
  VecI bits = (__builtin_convertvector(n, VecI) + 127) << 23;
  VecF scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
#endif
}

}  // namespace qjax

#endif  // QJAX_NATIVE_SIMD_H_
