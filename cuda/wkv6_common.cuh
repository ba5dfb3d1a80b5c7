// Shared pieces of the project's WKV6 kernels (RWKV-6 time mixing; docs/reference.md, "WKV recurrence"):
// constants, the 16-bit float type, tile loads and the handful of PTX instructions the kernels use
// (tf32 tensor-core mma.sync m16n8k8, cvt.rna.tf32, ex2.approx, cp.async).
//
// Fragment layouts follow the PTX ISA description of mma.m16n8k8 with .tf32 operands
// (g = lane / 4, c = lane % 4):  A (16x8, row major)  a0 (g, c)  a1 (g+8, c)  a2 (g, c+4)
// a3 (g+8, c+4);  B (8x8)  b0 (k=c, n=g)  b1 (k=c+4, n=g);  C/D (16x8)  d0 (g, 2c)  d1 (g, 2c+1)
// d2 (g+8, 2c)  d3 (g+8, 2c+1).
//
// Built with WKV6_EMULATE defined, the same kernels compile as host C++ against
// cuda/emu/wkv6_emu.h, which runs every CUDA thread of a block as a coroutine; the tests use that
// to check the kernels' logic on a machine without a GPU.
#pragma once

#include <cstdint>

#ifdef WKV6_EMULATE
#include "emu/wkv6_emu.h"
#define WKV6_DEV inline
#define WKV6_KERNEL(threads) inline void
#define WKV6_DYNAMIC_SMEM(name) unsigned char* name = wkv6emu::block_smem()
#else
#include <cuda_runtime.h>
#define WKV6_DEV __device__ __forceinline__
// Two blocks per multiprocessor: a block walks one (batch row, head) through time, so a second
// resident block is what hides the latency of its dependent phases.
#define WKV6_KERNEL(threads) __global__ void __launch_bounds__(threads, 2)
#define WKV6_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace wkv6 {

constexpr int CH = 16;   // time steps per chunk: the unit of the recurrence between state updates
constexpr int SEG = 4;   // chunks per stored state (the forward keeps one state every SEG * CH steps)
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;
// Inside a chunk the scores r_t k_s prod_{s<m<t} decay_m are factored as
// (r_t 2^{Gx_t}) (k_s 2^{-G_s}) so that they become one matrix product. That takes 2^{-G_s}, which
// grows with the chunk's decay: when some channel's log2-decay over the first 15 steps passes this
// limit (2^86 ~ e^59.6) the chunk is computed exactly instead, one product of decays per (t, s, j).
constexpr float FAST_LIMIT2 = 86.0f;

struct bf16 {
    uint16_t bits;
};

template <int N>
struct Geometry {
    static_assert(N == 16 || N == 32 || N == 64, "head size must be 16, 32 or 64");
    static constexpr int NW = N / 16;      // warps: each owns 16 rows of the N x N state
    static constexpr int NT = 32 * NW;     // threads = 2 N: two per channel in the scans
    static constexpr int GROUP = N / 8;    // threads per time step when each takes 8 channels
    // fp32 tiles read as mma operands: row stride = 8 mod 32 words keeps both fragment patterns
    // free of bank conflicts (N rounded up to 32, plus 8: 40, 40, 72 words for N = 16, 32, 64)
    static constexpr int LDF = (N + 31) / 32 * 32 + 8;
    static constexpr int LDE = N + 4;      // fp32 tiles read at accumulator positions
    static constexpr int LDA = 20;         // 16 x 16 score tiles
};

// Row stride of an input tile: one 16-byte pad per row.
template <class X>
constexpr int tile_ld(int n) { return n + 16 / (int)sizeof(X); }

// ---------------------------------------------------------------------------------------------
// scalar conversions

#ifdef WKV6_EMULATE
WKV6_DEV float bits_f(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
WKV6_DEV uint32_t f_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
#else
WKV6_DEV float bits_f(uint32_t u) { return __uint_as_float(u); }
WKV6_DEV uint32_t f_bits(float f) { return __float_as_uint(f); }
#endif

WKV6_DEV float to_f(float x) { return x; }
WKV6_DEV float to_f(bf16 x) { return bits_f(uint32_t(x.bits) << 16); }

template <class X>
WKV6_DEV X from_f(float x);

template <>
WKV6_DEV float from_f<float>(float x) { return x; }

// Round to nearest even; NaN stays NaN.
template <>
WKV6_DEV bf16 from_f<bf16>(float x) {
    uint32_t u = f_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40u)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return bf16{uint16_t(u >> 16)};
}

// Two neighbouring elements as floats (one 32-bit load for bf16, one 64-bit load for fp32).
WKV6_DEV float2 ld2(const float* p) { return *reinterpret_cast<const float2*>(p); }
WKV6_DEV float2 ld2(const bf16* p) {
    const uint32_t u = *reinterpret_cast<const uint32_t*>(p);
    return make_float2(bits_f(u << 16), bits_f(u & 0xffff0000u));
}

// Eight neighbouring elements (16-byte aligned) as floats.
WKV6_DEV void ld8(const float* p, float (&x)[8]) {
    const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    x[0] = a.x; x[1] = a.y; x[2] = a.z; x[3] = a.w; x[4] = b.x; x[5] = b.y; x[6] = b.z; x[7] = b.w;
}
WKV6_DEV void ld8(const bf16* p, float (&x)[8]) {
    const uint4 q = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        x[2 * i] = bits_f(w[i] << 16);
        x[2 * i + 1] = bits_f(w[i] & 0xffff0000u);
    }
}

// ---------------------------------------------------------------------------------------------
// PTX instructions (the emulator supplies host versions with the same semantics)

#ifndef WKV6_EMULATE
WKV6_DEV float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// fp32 -> tf32, round to nearest (ties away), as the tensor cores would otherwise truncate.
WKV6_DEV uint32_t tf32(float x) {
    uint32_t u;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
    return u;
}

// d += a b on a 16 x 8 x 8 tile, tf32 operands, fp32 accumulators.
WKV6_DEV void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

WKV6_DEV float shfl_xor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
WKV6_DEV void sync() { __syncthreads(); }
WKV6_DEV int sync_or(int pred) { return __syncthreads_or(pred); }

// 16 bytes global -> shared without passing through registers; zero fill when !full.
WKV6_DEV void cp_async16(void* dst, const void* src, bool full) {
    const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src), "r"(full ? 16 : 0));
}
WKV6_DEV void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
WKV6_DEV void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }
#else
using wkv6emu::cp_async16;
using wkv6emu::cp_async_commit;
using wkv6emu::cp_async_wait_all;
using wkv6emu::ex2;
using wkv6emu::mma;
using wkv6emu::shfl_xor;
using wkv6emu::sync;
using wkv6emu::sync_or;
using wkv6emu::tf32;
#endif

WKV6_DEV float round_tf32(float x) { return bits_f(tf32(x)); }

// Log2-decays of one chunk for channel j, and their interval sums, each summed directly (never a
// difference of long sums): g2[t] of step t (0 past the sequence end), gx[t] = sum of g2 before
// t, rx[t] = sum of g2 after t. Returns the whole chunk's sum. Forward and backward share it so
// that the backward's replay decays exactly as the forward did.
template <class TW>
WKV6_DEV float chunk_log2_decays(const TW* wt, int ldw, int j, int t0, int len, float (&g2)[CH],
                                 float (&gx)[CH], float (&rx)[CH]) {
#pragma unroll
    for (int t = 0; t < CH; ++t)
        g2[t] = t0 + t < len ? -ex2(to_f(wt[t * ldw + j]) * LOG2E) * LOG2E : 0.f;
    float acc = 0.f;
#pragma unroll
    for (int t = 0; t < CH; ++t) { gx[t] = acc; acc += g2[t]; }
    const float total = acc;
    acc = 0.f;
#pragma unroll
    for (int t = CH - 1; t >= 0; --t) { rx[t] = acc; acc += g2[t]; }
    return total;
}

// An input element as a tf32 operand: bf16 values are exact in tf32 and need no conversion.
WKV6_DEV uint32_t opnd(float x) { return tf32(x); }
WKV6_DEV uint32_t opnd(bf16 x) { return uint32_t(x.bits) << 16; }

// Two neighbouring input elements as tf32 operands.
WKV6_DEV void opnd2(const float* p, uint32_t& a, uint32_t& b) {
    const float2 v = ld2(p);
    a = tf32(v.x);
    b = tf32(v.y);
}
WKV6_DEV void opnd2(const bf16* p, uint32_t& a, uint32_t& b) {
    const uint32_t u = *reinterpret_cast<const uint32_t*>(p);
    a = u << 16;
    b = u & 0xffff0000u;
}

// Sum over the GROUP consecutive lanes that share a time step.
template <int GROUP>
WKV6_DEV float group_sum(float x) {
#pragma unroll
    for (int m = GROUP / 2; m >= 1; m /= 2) x += shfl_xor(x, m);
    return x;
}

// The bonus term on the diagonal of a chunk's score tile: A[t, t] = sum_j r_t[j] u[j] k_t[j],
// GROUP threads per time step, 8 channels each (r and k tiles of row stride ldt).
template <int N, class T>
WKV6_DEV void bonus_diagonal(const T* rt, const T* kt, int ldt, const float* us, float* af, int tid) {
    using G = Geometry<N>;
    const int t = tid / G::GROUP, jg = tid % G::GROUP;
    float rv[8], kv[8];
    ld8(rt + t * ldt + 8 * jg, rv);
    ld8(kt + t * ldt + 8 * jg, kv);
    float s = 0.f;
#pragma unroll
    for (int q = 0; q < 8; ++q) s += rv[q] * us[8 * jg + q] * kv[q];
    s = group_sum<G::GROUP>(s);
    if (jg == 0) af[t * G::LDA + t] = s;
}

// Copy rows t0 .. t0+15 of one head ([T, H*N] with row stride `row_stride`) into a shared tile of
// row stride `ld`; rows at or beyond T are zero filled.
template <int N, class X>
WKV6_DEV void load_tile(X* dst, int ld, const X* src, long long row_stride, int t0, int T, int tid,
                        int nthreads) {
    constexpr int per_row = N * (int)sizeof(X) / 16, per_seg = 16 / (int)sizeof(X);
    for (int s = tid; s < CH * per_row; s += nthreads) {
        const int row = s / per_row, col = (s % per_row) * per_seg, t = t0 + row;
        const bool ok = t < T;
        cp_async16(dst + row * ld + col, src + (long long)(ok ? t : 0) * row_stride + col, ok);
    }
}

// Write the valid rows of a shared tile back to global memory, 16 bytes per thread and access.
template <int N, class X>
WKV6_DEV void store_tile(X* dst, const X* tile, int ld, long long row_stride, int t0, int T, int tid,
                         int nthreads) {
    constexpr int per_row = N * (int)sizeof(X) / 16, per_seg = 16 / (int)sizeof(X);
    for (int s = tid; s < CH * per_row; s += nthreads) {
        const int row = s / per_row, col = (s % per_row) * per_seg, t = t0 + row;
        if (t < T)
            *reinterpret_cast<uint4*>(dst + (long long)t * row_stride + col) =
                *reinterpret_cast<const uint4*>(tile + row * ld + col);
    }
}

}  // namespace wkv6
