// WKV6 forward kernel: y (and optionally the final state and one stored state every SEG chunks)
// for the recurrence of docs/reference.md, "WKV recurrence", per batch row b and head h, state S
// [key j, value i]:
//
//     y_t[i] = sum_j r_t[j] (u[j] k_t[j] v_t[i] + S_{t-1}[j, i])
//     S_t    = diag(exp(-exp(w_t))) S_{t-1} + k_t^T v_t
//
// One block of 2N threads walks one (b, h) through time in chunks of CH = 16 steps. Within a chunk,
// with g = log2-decay and cumulative sums Gx_t = sum_{m<t} g_m, R_t = sum_{m>t} g_m (both summed
// over their own interval, so every exponent is <= 0):
//
//     y   = (r 2^Gx) S^T-part  +  A v        A[t,s] = sum_j r_t k_s prod_{s<m<t} decay_m   (s < t)
//     S'  = diag(2^{sum g}) S  +  (k 2^R)^T v                                A[t,t] = r_t . (u k_t)
//
// The three products run on the tensor cores (tf32 mma.sync, fp32 accumulators); the state lives in
// registers as mma accumulators, transposed (rows = value index i), which makes it directly the A
// operand of y^T = S^T (r 2^Gx)^T. A is either one more product of factored operands (the usual
// case) or, in chunks whose decay is too fast to factor safely, an exact product of decays on the
// CUDA cores. This is the chunkwise form of gated linear attention (Yang et al. 2024), written
// for this repository; src/conrwkv/ops/wkv6_torch.py holds the reference.
#pragma once

#include "wkv6_common.cuh"

namespace wkv6 {

template <class T, class TW>
struct FwdParams {
    const T* r;
    const T* k;
    const T* v;
    const TW* w;
    const float* u;          // [H, N]
    const float* s0;         // initial state [.., H, N, N] (key, value) or nullptr
    long long s0_bstride;    // elements between batch rows of s0 (0: shared by the batch)
    T* y;
    float* s_final;          // [B, H, N, N] or nullptr
    float* ckpt;             // [B, H, nseg, N, N]: state entering chunk SEG*n, or nullptr
    int B, len, H;   // len: sequence length
};

template <int N, class T, class TW>
struct FwdLayout {
    using G = Geometry<N>;
    static constexpr int LDT = tile_ld<T>(N), LDW = tile_ld<TW>(N);
    static constexpr int tileT = CH * LDT * sizeof(T), tileW = CH * LDW * sizeof(TW);
    static constexpr int buf = 3 * tileT + tileW;                  // r, k, v, w of one chunk
    static constexpr int fsz = CH * G::LDF * 4;
    static constexpr int o_qd = 2 * buf;                           // r 2^Gx            [t][j]
    static constexpr int o_kd = o_qd + fsz;                        // k 2^R             [s][j]
    static constexpr int o_kf = o_kd + fsz;                        // k 2^-G (factored) [s][j]
    static constexpr int o_g2 = o_kf + fsz;                        // log2-decays       [t][j]
    static constexpr int o_af = o_g2 + CH * N * 4;                 // scores A          [t][s]
    static constexpr int o_af2 = o_af + CH * G::LDA * 4;           // second partial sum of A
    static constexpr int o_dt = o_af2 + CH * G::LDA * 4;           // chunk decay       [j]
    static constexpr int o_u = o_dt + N * 4;
    static constexpr int o_ys = o_u + N * 4;                       // y staging         [t][i]
    static constexpr int bytes = o_ys + tileT;
};

// Scores of one chunk, exactly: thread (s, group of 8 channels) carries k_s times the running
// product of decays and meets every later r_t.
template <int N, class T>
WKV6_DEV void exact_scores(const T* rt, const T* kt, const float* g2s, float* af, int ldt, int tid) {
    using G = Geometry<N>;
    const int s = tid / G::GROUP, jg = tid % G::GROUP;
    float x[8];
    ld8(kt + s * ldt + 8 * jg, x);
    for (int t = 1; t < CH; ++t) {
        const bool act = t > s;
        float val = 0.f;
        if (act) {
            float rv[8], g2[8];
            ld8(rt + t * ldt + 8 * jg, rv);
            ld8(g2s + t * N + 8 * jg, g2);
#pragma unroll
            for (int q = 0; q < 8; ++q) {
                val += rv[q] * x[q];
                x[q] *= ex2(g2[q]);
            }
        }
        val = group_sum<G::GROUP>(val);
        if (jg == 0 && act) af[t * G::LDA + s] = val;
    }
    if (jg == 0)
        for (int t = 0; t < s; ++t) af[t * G::LDA + s] = 0.f;
}

// Scores of one chunk through the factored operands, columns s in [8 ns, 8 ns + 8), summed over the
// channel blocks kk in [k0, k1). Written for s < t, zero above the diagonal; the diagonal (the bonus)
// is left alone unless zero_diag, as the second of two partial sums must zero it.
template <int N>
WKV6_DEV void factored_scores(const float* qd, const float* kf, float* af, int ns, int g, int tig, int k0, int k1,
                              bool zero_diag) {
    using G = Geometry<N>;
    float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};   // two chains: half the latency
#pragma unroll
    for (int kk = 0; kk < N / 8; ++kk) {
        if (kk < k0 || kk >= k1) continue;
        // k index permuted: slot c <-> channel 8kk + 2c, slot c+4 <-> 8kk + 2c + 1 (64-bit loads)
        const float2 a02 = ld2(qd + g * G::LDF + 8 * kk + 2 * tig);
        const float2 a13 = ld2(qd + (g + 8) * G::LDF + 8 * kk + 2 * tig);
        const float2 bb = ld2(kf + (8 * ns + g) * G::LDF + 8 * kk + 2 * tig);
        const uint32_t a[4] = {f_bits(a02.x), f_bits(a13.x), f_bits(a02.y), f_bits(a13.y)};
        const uint32_t b[2] = {f_bits(bb.x), f_bits(bb.y)};
        mma(acc[kk & 1], a, b);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const int t = g + 8 * (e >> 1), s = 8 * ns + 2 * tig + (e & 1);
        if (s < t) af[t * G::LDA + s] = acc[0][e] + acc[1][e];
        else if (s > t || zero_diag) af[t * G::LDA + s] = 0.f;
    }
}

template <int N, class T, class TW>
WKV6_KERNEL(2 * N) wkv6_forward_kernel(const FwdParams<T, TW> p) {
    using G = Geometry<N>;
    using L = FwdLayout<N, T, TW>;
    constexpr int LDT = L::LDT, LDW = L::LDW, LDF = G::LDF, LDA = G::LDA, NT = G::NT;
    WKV6_DYNAMIC_SMEM(smem);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
    const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
    const int len = p.len, nchunks = (len + CH - 1) / CH, nseg = (nchunks + SEG - 1) / SEG;
    const long long rs = (long long)p.H * N;                    // stride between time steps
    const long long base = ((long long)b * len * p.H + h) * N;    // element (b, 0, h, 0)

    float* qd = reinterpret_cast<float*>(smem + L::o_qd);
    float* kd = reinterpret_cast<float*>(smem + L::o_kd);
    float* kf = reinterpret_cast<float*>(smem + L::o_kf);
    float* g2s = reinterpret_cast<float*>(smem + L::o_g2);
    float* af = reinterpret_cast<float*>(smem + L::o_af);
    float* af2 = reinterpret_cast<float*>(smem + L::o_af2);
    float* dt = reinterpret_cast<float*>(smem + L::o_dt);
    float* us = reinterpret_cast<float*>(smem + L::o_u);
    T* ys = reinterpret_cast<T*>(smem + L::o_ys);

    if (tid < N) us[tid] = p.u[h * N + tid];

    // S^T in mma accumulator layout: rows i = i0, i0 + 8; columns j = 8 nt + 2 tig (+1).
    const int i0 = 16 * warp + g;
    float st[N / 8][4];
    {
        const float* s0 = p.s0 ? p.s0 + b * p.s0_bstride + (long long)h * N * N : nullptr;
#pragma unroll
        for (int nt = 0; nt < N / 8; ++nt) {
            const int j = 8 * nt + 2 * tig;
            st[nt][0] = s0 ? s0[j * N + i0] : 0.f;
            st[nt][1] = s0 ? s0[(j + 1) * N + i0] : 0.f;
            st[nt][2] = s0 ? s0[j * N + i0 + 8] : 0.f;
            st[nt][3] = s0 ? s0[(j + 1) * N + i0 + 8] : 0.f;
        }
    }

    auto issue_loads = [&](int c, unsigned char* dst) {
        T* d = reinterpret_cast<T*>(dst);
        load_tile<N>(d, LDT, p.r + base, rs, c * CH, len, tid, NT);
        load_tile<N>(d + CH * LDT, LDT, p.k + base, rs, c * CH, len, tid, NT);
        load_tile<N>(d + 2 * CH * LDT, LDT, p.v + base, rs, c * CH, len, tid, NT);
        load_tile<N>(reinterpret_cast<TW*>(dst + 3 * L::tileT), LDW, p.w + base, rs, c * CH, len, tid, NT);
        cp_async_commit();
    };
    auto store_state = [&](float* out) {
#pragma unroll
        for (int nt = 0; nt < N / 8; ++nt) {
            const int j = 8 * nt + 2 * tig;
            out[j * N + i0] = st[nt][0];
            out[(j + 1) * N + i0] = st[nt][1];
            out[j * N + i0 + 8] = st[nt][2];
            out[(j + 1) * N + i0 + 8] = st[nt][3];
        }
    };

    issue_loads(0, smem);
    for (int c = 0; c < nchunks; ++c) {
        const int t0 = c * CH;
        unsigned char* cur = smem + (c & 1) * L::buf;
        cp_async_wait_all();
        sync();   // this chunk's tiles have landed; every thread is done with the previous chunk
        if (c + 1 < nchunks) issue_loads(c + 1, smem + ((c + 1) & 1) * L::buf);
        if (p.ckpt && c % SEG == 0) store_state(p.ckpt + ((long long)bh * nseg + c / SEG) * N * N);

        const T* rt = reinterpret_cast<const T*>(cur);
        const T* kt = rt + CH * LDT;
        const T* vt = kt + CH * LDT;
        const TW* wt = reinterpret_cast<const TW*>(cur + 3 * L::tileT);

        // Decays and their interval sums, per channel j; thread half hf writes rows 8 hf .. 8 hf + 7.
        bool ok;
        {
            const int j = tid % N, hf = tid / N;
            float g2[CH], gx[CH], rx[CH];
            const float total = chunk_log2_decays(wt, LDW, j, t0, len, g2, gx, rx);
            ok = -gx[CH - 1] <= FAST_LIMIT2;
#pragma unroll
            for (int t = 0; t < CH; ++t) {
                if ((t >> 3) != hf) continue;
                const float rv = to_f(rt[t * LDT + j]), kv = to_f(kt[t * LDT + j]);
                qd[t * LDF + j] = round_tf32(rv * ex2(gx[t]));
                kd[t * LDF + j] = round_tf32(kv * ex2(rx[t]));
                kf[t * LDF + j] = t < CH - 1 ? round_tf32(kv * ex2(fminf(-(gx[t] + g2[t]), FAST_LIMIT2))) : 0.f;
                g2s[t * N + j] = g2[t];
            }
            if (hf == 0) dt[j] = ex2(total);
        }
        // The bonus term sits on the diagonal of A: A[t, t] = sum_j r_t u k_t.
        bonus_diagonal<N>(rt, kt, LDT, us, af, tid);
        const bool fast = !sync_or(!ok);

        // With 4 warps, each takes one column tile and half of the channels (two partial sums).
        constexpr bool split = G::NW >= 4;
        if (fast) {
            if (split) {
                const int half = warp >> 1;
                factored_scores<N>(qd, kf, half ? af2 : af, warp & 1, g, tig, half * N / 16, (half + 1) * N / 16, half);
            } else {
                // one column tile of 8 per warp; a single warp (N = 16) takes both
                for (int ns = warp; ns < 2; ns += G::NW) factored_scores<N>(qd, kf, af, ns, g, tig, 0, N / 8, false);
            }
        } else {
            exact_scores<N>(rt, kt, g2s, af, LDT, tid);
        }
        sync();

        // y^T[i, t] = sum_j S^T[i, j] qd[t, j] + sum_s v[s, i] A[t, s], in two accumulator chains
        float ya[2][2][4] = {};
#pragma unroll
        for (int kk = 0; kk < N / 8; ++kk) {
            const uint32_t a[4] = {tf32(st[kk][0]), tf32(st[kk][2]), tf32(st[kk][1]), tf32(st[kk][3])};
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                const float2 bb = ld2(qd + (8 * nt + g) * LDF + 8 * kk + 2 * tig);
                const uint32_t bq[2] = {f_bits(bb.x), f_bits(bb.y)};
                mma(ya[kk & 1][nt], a, bq);
            }
        }
        const bool two = fast && split;
        uint32_t va[2][4];
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
            va[ks][0] = opnd(vt[(8 * ks + tig) * LDT + i0]);
            va[ks][1] = opnd(vt[(8 * ks + tig) * LDT + i0 + 8]);
            va[ks][2] = opnd(vt[(8 * ks + tig + 4) * LDT + i0]);
            va[ks][3] = opnd(vt[(8 * ks + tig + 4) * LDT + i0 + 8]);
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                const int o0 = (8 * nt + g) * LDA + 8 * ks + tig, o1 = o0 + 4;
                const uint32_t bq[2] = {tf32(two ? af[o0] + af2[o0] : af[o0]), tf32(two ? af[o1] + af2[o1] : af[o1])};
                mma(ya[ks][nt], va[ks], bq);
            }
        }
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                ys[(8 * nt + 2 * tig + (e & 1)) * LDT + i0 + 8 * (e >> 1)] = from_f<T>(ya[0][nt][e] + ya[1][nt][e]);

        // S^T <- S^T diag(decay over the chunk) + v^T (k 2^R)
#pragma unroll
        for (int nt = 0; nt < N / 8; ++nt) {
            const float2 d = ld2(dt + 8 * nt + 2 * tig);
            st[nt][0] *= d.x;
            st[nt][1] *= d.y;
            st[nt][2] *= d.x;
            st[nt][3] *= d.y;
#pragma unroll
            for (int ks = 0; ks < 2; ++ks) {
                const uint32_t bq[2] = {f_bits(kd[(8 * ks + tig) * LDF + 8 * nt + g]),
                                        f_bits(kd[(8 * ks + tig + 4) * LDF + 8 * nt + g])};
                mma(st[nt], va[ks], bq);
            }
        }
        sync();
        store_tile<N>(p.y + base, ys, LDT, rs, t0, len, tid, NT);
    }
    if (p.s_final) store_state(p.s_final + (long long)bh * N * N);
}

}  // namespace wkv6
