// WKV6 backward kernel: dr, dk, dv, dw (with respect to the raw w), du and d(initial state) for the
// recurrence of docs/reference.md, "WKV recurrence" (see wkv6_fwd.cuh for the notation).
//
// One block of 2N threads walks one (b, h) backwards through time, carrying dS, the gradient with
// respect to the state leaving the current chunk, in registers (rows = key index j). Per chunk of
// CH steps, with S the state entering it, dA[t,s] = dy_t . v_s (s < t), A the scores and the factors
// e_q = 2^Gx, e_k = 2^R, e_i = 2^-G of wkv6_fwd.cuh:
//
//   dr_t = e_q (S dy_t) + sum_{s<t} dA[t,s] k_s P[t,s] + u k_t (dy_t . v_t)
//   dk_s = e_k (dS v_s) + sum_{t>s} dA[t,s] r_t P[t,s] + u r_s (dy_s . v_s)
//   dv_s = sum_{t>s} A[t,s] dy_t + (k_s e_k) dS + (r_s . u k_s) dy_s
//   dS  <- diag(decay over the chunk) dS + (r e_q)^T dy          P[t,s] = prod_{s<m<t} decay_m
//
// The gradient of the log-decay g_m sums the pairs (t, s) whose path crosses step m (s < m < t).
// It is taken per chunk, each part summed directly, never as a difference of running sums over the
// whole sequence (that difference cancels, and its rounding error grows with T):
//
//   dg_m = sum_{s<m<t in chunk} dA[t,s] r_t k_s P[t,s]     pairs inside the chunk
//        + sum_{t>m} r_t e_q (S dy_t)                        s before the chunk
//        + sum_{s<m} k_s e_k (dS v_s)                        t after the chunk
//        + decay(chunk) sum_i S[j,i] dS[j,i]                 both outside;     dw = dg * g.
//
// The states entering chunks are rebuilt from the ones the forward stored every SEG chunks: at the
// start of a segment the block replays its first SEG - 1 chunks forward (keeping two of the
// intermediate states in a small global scratch that stays in L2), then goes back through them.
// Products run on the tensor cores (tf32 mma.sync); chunks whose decay is too fast to factor take
// exact products of decays on the CUDA cores, as in the forward.
#pragma once

#include "wkv6_fwd.cuh"   // factored_scores: the same A as in the forward

namespace wkv6 {

template <class T, class TW>
struct BwdParams {
    const T* r;
    const T* k;
    const T* v;
    const TW* w;
    const float* u;
    const float* ckpt;      // [B, H, nseg, N, N] from the forward
    const T* dy;
    const float* dsf;       // gradient of the final state [B, H, N, N] or nullptr
    float* scratch;         // [B, H, 2, N, N] floats, layout private to the kernel
    T* dr;
    T* dk;
    T* dv;
    TW* dw;
    float* du;              // [B, H, N]: per batch row, summed by the caller
    float* ds0;             // [B, H, N, N] or nullptr
    int B, len, H;          // len: sequence length
};

template <int N, class T, class TW>
struct BwdLayout {
    using G = Geometry<N>;
    static constexpr int LDT = tile_ld<T>(N), LDW = tile_ld<TW>(N);
    static constexpr int tileT = CH * LDT * sizeof(T), tileW = CH * LDW * sizeof(TW);
    static constexpr int buf = 4 * tileT + tileW;                  // r, k, v, dy, w of one chunk
    static constexpr int fsz = CH * G::LDF * 4, esz = CH * G::LDE * 4, asz = CH * G::LDA * 4;
    static constexpr int o_qd = 2 * buf;                           // r e_q   [t][j]
    static constexpr int o_kd = o_qd + fsz;                        // k e_k   [s][j]
    static constexpr int o_kf = o_kd + fsz;                        // k e_i   [s][j]
    static constexpr int o_eq = o_kf + fsz;                        // e_q, e_k, e_i  [t][j]
    static constexpr int o_ek = o_eq + esz;
    static constexpr int o_ei = o_ek + esz;
    static constexpr int o_drs = o_ei + esz;                       // state parts of dr, dk [t][j]
    static constexpr int o_dks = o_drs + esz;
    static constexpr int o_dri = o_dks + esz;                      // intra-chunk parts of dr, dk
    static constexpr int o_dki = o_dri + esz;
    static constexpr int o_g2 = o_dki + esz;                       // log2-decays [t][j]
    static constexpr int o_dam = o_g2 + CH * N * 4;                // dA, s < t   [t][s]
    static constexpr int o_dat = o_dam + asz;                      // dA^T        [s][t]
    static constexpr int o_af = o_dat + asz;                       // A with the bonus diagonal
    static constexpr int o_ds = o_af + asz;                        // dS^T  [i][j]
    static constexpr int o_out = o_ds + N * G::LDF * 4;            // staging dr, dk, dv, dw
    static constexpr int o_dt = o_out + 3 * tileT + tileW;
    static constexpr int o_u = o_dt + N * 4;
    static constexpr int o_xc = o_u + N * 4;                       // decay * sum_i S dS   [j]
    static constexpr int o_vdy = o_xc + N * 4;                     // dy_t . v_t
    static constexpr int o_x = o_vdy + 64;                         // exchange between thread halves
    static constexpr int bytes = o_x + 2 * N * 4;
};

// Exact intra-chunk terms, for chunks whose decay is too fast to factor: the scores A (s != t),
// sum_{t>s} dA[t,s] r_t P[t,s] into dki and sum_{s<t} dA[t,s] k_s P[t,s] into dri, with P
// carried as running products of decays.
template <int N, class T>
WKV6_DEV void exact_backward(const T* rt, const T* kt, const float* g2s, const float* dam, float* af,
                             float* dri, float* dki, int ldt, int tid) {
    using G = Geometry<N>;
    const int jg = tid % G::GROUP, row = tid / G::GROUP;
    {
        const int s = row;
        float kv[8], pr[8], acc[8];
        ld8(kt + s * ldt + 8 * jg, kv);
#pragma unroll
        for (int q = 0; q < 8; ++q) { pr[q] = 1.f; acc[q] = 0.f; }
        for (int t = 1; t < CH; ++t) {
            const bool act = t > s;
            float val = 0.f;
            if (act) {
                float rv[8], g2[8];
                ld8(rt + t * ldt + 8 * jg, rv);
                ld8(g2s + t * N + 8 * jg, g2);
                const float d = dam[t * G::LDA + s];
#pragma unroll
                for (int q = 0; q < 8; ++q) {
                    const float z = rv[q] * pr[q];
                    val += z * kv[q];
                    acc[q] += d * z;
                    pr[q] *= ex2(g2[q]);
                }
            }
            val = group_sum<G::GROUP>(val);
            if (jg == 0 && act) af[t * G::LDA + s] = val;
        }
        if (jg == 0)
            for (int t = 0; t < s; ++t) af[t * G::LDA + s] = 0.f;
#pragma unroll
        for (int q = 0; q < 8; ++q) dki[s * G::LDE + 8 * jg + q] = acc[q];
    }
    {
        const int t = row;
        float pr[8], acc[8];
#pragma unroll
        for (int q = 0; q < 8; ++q) { pr[q] = 1.f; acc[q] = 0.f; }
        for (int s = t - 1; s >= 0; --s) {
            float kv[8], g2[8];
            ld8(kt + s * ldt + 8 * jg, kv);
            ld8(g2s + s * N + 8 * jg, g2);
            const float d = dam[t * G::LDA + s];
#pragma unroll
            for (int q = 0; q < 8; ++q) {
                acc[q] += d * kv[q] * pr[q];
                pr[q] *= ex2(g2[q]);
            }
        }
#pragma unroll
        for (int q = 0; q < 8; ++q) dri[t * G::LDE + 8 * jg + q] = acc[q];
    }
}

// Pairs inside the chunk that cross step m, exactly, for channel j and steps m in [m0, m0 + 8):
// P[t,s] = P[t,m] decay_m P[m,s], each factor a running product of decays <= 1. Result m goes to
// out[m * ldo] (shared memory, so that the caller's arrays stay in registers).
template <int N, class T>
WKV6_DEV void exact_crossing(const T* rt, const T* kt, const float* g2s, const float* dam, int ldt, int j,
                             int m0, float* out, int ldo) {
    using G = Geometry<N>;
    float dd[CH], e[CH];
    for (int q = 0; q < CH; ++q) dd[q] = ex2(g2s[q * N + j]);
    for (int m = m0; m < m0 + 8; ++m) {
        for (int t = m + 1; t < CH; ++t) e[t] = 0.f;
        float pr = 1.f;
        for (int s = m - 1; s >= 0; --s) {
            const float a = to_f(kt[s * ldt + j]) * pr;
            for (int t = m + 1; t < CH; ++t) e[t] += dam[t * G::LDA + s] * a;
            pr *= dd[s];
        }
        float acc = 0.f;
        pr = 1.f;
        for (int t = m + 1; t < CH; ++t) {
            acc += to_f(rt[t * ldt + j]) * pr * e[t];
            pr *= dd[t];
        }
        out[m * ldo] = dd[m] * acc;
    }
}

template <int N, class T, class TW>
WKV6_KERNEL(2 * N) wkv6_backward_kernel(const BwdParams<T, TW> p) {
    using G = Geometry<N>;
    using L = BwdLayout<N, T, TW>;
    constexpr int LDT = L::LDT, LDW = L::LDW, LDF = G::LDF, LDE = G::LDE, LDA = G::LDA, NT = G::NT;
    WKV6_DYNAMIC_SMEM(smem);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
    const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
    const int len = p.len, nchunks = (len + CH - 1) / CH, nseg = (nchunks + SEG - 1) / SEG;
    const long long rs = (long long)p.H * N;
    const long long base = ((long long)b * len * p.H + h) * N;

    float* qd = reinterpret_cast<float*>(smem + L::o_qd);
    float* kd = reinterpret_cast<float*>(smem + L::o_kd);
    float* kf = reinterpret_cast<float*>(smem + L::o_kf);
    float* eq = reinterpret_cast<float*>(smem + L::o_eq);
    float* ek = reinterpret_cast<float*>(smem + L::o_ek);
    float* ei = reinterpret_cast<float*>(smem + L::o_ei);
    float* drs = reinterpret_cast<float*>(smem + L::o_drs);
    float* dks = reinterpret_cast<float*>(smem + L::o_dks);
    float* dri = reinterpret_cast<float*>(smem + L::o_dri);
    float* dki = reinterpret_cast<float*>(smem + L::o_dki);
    float* g2s = reinterpret_cast<float*>(smem + L::o_g2);
    float* dam = reinterpret_cast<float*>(smem + L::o_dam);
    float* dat = reinterpret_cast<float*>(smem + L::o_dat);
    float* af = reinterpret_cast<float*>(smem + L::o_af);
    float* dss = reinterpret_cast<float*>(smem + L::o_ds);
    T* out_r = reinterpret_cast<T*>(smem + L::o_out);
    T* out_k = out_r + CH * LDT;
    T* out_v = out_k + CH * LDT;
    TW* out_w = reinterpret_cast<TW*>(smem + L::o_out + 3 * L::tileT);
    float* dt = reinterpret_cast<float*>(smem + L::o_dt);
    float* us = reinterpret_cast<float*>(smem + L::o_u);
    float* xc = reinterpret_cast<float*>(smem + L::o_xc);
    float* vdy = reinterpret_cast<float*>(smem + L::o_vdy);
    float* xch = reinterpret_cast<float*>(smem + L::o_x);

    if (tid < N) us[tid] = p.u[h * N + tid];

    // S and dS in mma accumulator layout: rows j = j0, j0 + 8; columns i = 8 nt + 2 tig (+1).
    const int j0 = 16 * warp + g;
    float sr[N / 8][4], dsr[N / 8][4];
    auto load_rows = [&](float (&x)[N / 8][4], const float* src) {
#pragma unroll
        for (int nt = 0; nt < N / 8; ++nt) {
            const float2 a = ld2(src + j0 * N + 8 * nt + 2 * tig), c = ld2(src + (j0 + 8) * N + 8 * nt + 2 * tig);
            x[nt][0] = a.x; x[nt][1] = a.y; x[nt][2] = c.x; x[nt][3] = c.y;
        }
    };
    auto scratch_slot = [&](int slot) {
        return p.scratch + ((long long)bh * 2 + slot) * (N / 2) * NT;
    };
    if (p.dsf) {
        load_rows(dsr, p.dsf + (long long)bh * N * N);
    } else {
#pragma unroll
        for (int nt = 0; nt < N / 8; ++nt) dsr[nt][0] = dsr[nt][1] = dsr[nt][2] = dsr[nt][3] = 0.f;
    }
    auto store_ds_transposed = [&]() {
#pragma unroll
        for (int nt = 0; nt < N / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) dss[(8 * nt + 2 * tig + (e & 1)) * LDF + j0 + 8 * (e >> 1)] = dsr[nt][e];
    };
    store_ds_transposed();

    const int jc = tid % N, hf = tid / N;    // channel and row half in the per-channel phases
    float duacc = 0.f;

    // Work items, per segment from the last: replay chunks 0 .. nq-2 forward, then chunks nq-1 .. 0
    // backward.
    auto seg_len = [&](int sg) { return min(SEG, nchunks - sg * SEG); };
    auto item = [&](int sg, int pos, bool& bwd, int& q) {
        const int nq = seg_len(sg);
        bwd = pos >= nq - 1;
        q = bwd ? 2 * nq - 2 - pos : pos;
        return sg * SEG + q;
    };
    auto issue_loads = [&](int c, bool bwd, unsigned char* dst) {
        T* d = reinterpret_cast<T*>(dst);
        if (bwd) load_tile<N>(d, LDT, p.r + base, rs, c * CH, len, tid, NT);
        load_tile<N>(d + CH * LDT, LDT, p.k + base, rs, c * CH, len, tid, NT);
        load_tile<N>(d + 2 * CH * LDT, LDT, p.v + base, rs, c * CH, len, tid, NT);
        if (bwd) load_tile<N>(d + 3 * CH * LDT, LDT, p.dy + base, rs, c * CH, len, tid, NT);
        load_tile<N>(reinterpret_cast<TW*>(dst + 4 * L::tileT), LDW, p.w + base, rs, c * CH, len, tid, NT);
        cp_async_commit();
    };

    int sg = nseg - 1, pos = 0, bsel = 0;
    {
        bool bwd;
        int q;
        const int c = item(sg, pos, bwd, q);
        issue_loads(c, bwd, smem);
    }
    while (true) {
        bool bwd;
        int q;
        const int c = item(sg, pos, bwd, q), nq = seg_len(sg), t0 = c * CH;
        int nsg = sg, npos = pos + 1;
        if (npos >= 2 * nq - 1) { nsg = sg - 1; npos = 0; }
        unsigned char* cur = smem + bsel * L::buf;
        cp_async_wait_all();
        sync();
        if (nsg >= 0) {
            bool nb;
            int nqq;
            const int nc = item(nsg, npos, nb, nqq);
            issue_loads(nc, nb, smem + (bsel ^ 1) * L::buf);
        }
        const float* ck = p.ckpt + ((long long)bh * nseg + sg) * N * N;
        if (pos == 0 || (bwd && q == 0)) load_rows(sr, ck);
        else if (bwd && q < nq - 1) {
            const float4* src = reinterpret_cast<const float4*>(scratch_slot(q - 1));
#pragma unroll
            for (int nt = 0; nt < N / 8; ++nt) {
                const float4 x = src[nt * NT + tid];
                sr[nt][0] = x.x; sr[nt][1] = x.y; sr[nt][2] = x.z; sr[nt][3] = x.w;
            }
        }

        const T* rt = reinterpret_cast<const T*>(cur);
        const T* kt = rt + CH * LDT;
        const T* vt = kt + CH * LDT;
        const T* dyt = vt + CH * LDT;
        const TW* wt = reinterpret_cast<const TW*>(cur + 4 * L::tileT);

        if (!bwd) {
            // Replay: S <- diag(decay over the chunk) S + (k e_k)^T v.
            {
                float g2[CH], rx[CH];
#pragma unroll
                for (int t = 0; t < CH; ++t)
                    g2[t] = t0 + t < len ? -ex2(to_f(wt[t * LDW + jc]) * LOG2E) * LOG2E : 0.f;
                float acc = 0.f;
#pragma unroll
                for (int t = CH - 1; t >= 0; --t) { rx[t] = acc; acc += g2[t]; }
#pragma unroll
                for (int t = 0; t < CH; ++t) {
                    if ((t >> 3) != hf) continue;
                    kd[t * LDF + jc] = round_tf32(to_f(kt[t * LDT + jc]) * ex2(rx[t]));
                }
                if (hf == 0) dt[jc] = ex2(acc);
            }
            sync();
            const float d0 = dt[j0], d1 = dt[j0 + 8];
            uint32_t ka[2][4];
#pragma unroll
            for (int ks = 0; ks < 2; ++ks) {
                ka[ks][0] = f_bits(kd[(8 * ks + tig) * LDF + j0]);
                ka[ks][1] = f_bits(kd[(8 * ks + tig) * LDF + j0 + 8]);
                ka[ks][2] = f_bits(kd[(8 * ks + tig + 4) * LDF + j0]);
                ka[ks][3] = f_bits(kd[(8 * ks + tig + 4) * LDF + j0 + 8]);
            }
#pragma unroll
            for (int nt = 0; nt < N / 8; ++nt) {
                sr[nt][0] *= d0; sr[nt][1] *= d0; sr[nt][2] *= d1; sr[nt][3] *= d1;
#pragma unroll
                for (int ks = 0; ks < 2; ++ks) {
                    const uint32_t bq[2] = {opnd(vt[(8 * ks + tig) * LDT + 8 * nt + g]),
                                            opnd(vt[(8 * ks + tig + 4) * LDT + 8 * nt + g])};
                    mma(sr[nt], ka[ks], bq);
                }
            }
            if (q + 1 <= nq - 2) {
                float4* dst = reinterpret_cast<float4*>(scratch_slot(q));
#pragma unroll
                for (int nt = 0; nt < N / 8; ++nt) dst[nt * NT + tid] = make_float4(sr[nt][0], sr[nt][1], sr[nt][2], sr[nt][3]);
            }
        } else {
            // --- decay factors of this chunk, per channel
            bool ok;
            {
                float g2[CH], gx[CH], rx[CH];
                const float total = chunk_log2_decays(wt, LDW, jc, t0, len, g2, gx, rx);
                ok = -gx[CH - 1] <= FAST_LIMIT2;
#pragma unroll
                for (int t = 0; t < CH; ++t) {
                    if ((t >> 3) != hf) continue;
                    const float rv = to_f(rt[t * LDT + jc]), kv = to_f(kt[t * LDT + jc]);
                    const float e_q = ex2(gx[t]), e_k = ex2(rx[t]);
                    const float e_i = t < CH - 1 ? ex2(fminf(-(gx[t] + g2[t]), FAST_LIMIT2)) : 0.f;
                    qd[t * LDF + jc] = round_tf32(rv * e_q);
                    kd[t * LDF + jc] = round_tf32(kv * e_k);
                    kf[t * LDF + jc] = round_tf32(kv * e_i);
                    eq[t * LDE + jc] = e_q;
                    ek[t * LDE + jc] = e_k;
                    ei[t * LDE + jc] = e_i;
                    g2s[t * N + jc] = g2[t];
                }
                if (hf == 0) dt[jc] = ex2(total);
            }
            bonus_diagonal<N>(rt, kt, LDT, us, af, tid);
            const bool fast = !sync_or(!ok);

            // --- dA = dy v^T (with its diagonal dy_t . v_t) and, when factored, A
            for (int task = warp; task < 4; task += G::NW) {
                const int ns = task & 1;
                if (task < 2) {
                    float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
                    for (int kk = 0; kk < N / 8; ++kk) {
                        uint32_t a[4], bq[2];
                        opnd2(dyt + g * LDT + 8 * kk + 2 * tig, a[0], a[2]);
                        opnd2(dyt + (g + 8) * LDT + 8 * kk + 2 * tig, a[1], a[3]);
                        opnd2(vt + (8 * ns + g) * LDT + 8 * kk + 2 * tig, bq[0], bq[1]);
                        mma(acc[kk & 1], a, bq);
                    }
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int t = g + 8 * (e >> 1), s = 8 * ns + 2 * tig + (e & 1);
                        const float sum = acc[0][e] + acc[1][e], v = s < t ? sum : 0.f;
                        dam[t * LDA + s] = v;
                        dat[s * LDA + t] = v;
                        if (s == t) vdy[t] = sum;
                    }
                } else if (fast) {
                    factored_scores<N>(qd, kf, af, ns, g, tig, 0, N / 8, false);
                }
            }
            sync();
            if (!fast) {
                exact_backward<N>(rt, kt, g2s, dam, af, dri, dki, LDT, tid);
                sync();
            }

            // --- dr^T[j, t] and dk^T[j, s] (rows j of this warp), dv[s, i] (columns i of this warp)
            float ra[2][4] = {}, ka1[2][4] = {}, ka2[2][4] = {}, va[2][4] = {};
            float xpart0 = 0.f, xpart1 = 0.f;   // sum_i S dS on rows j0, j0 + 8
#pragma unroll
            for (int kk = 0; kk < N / 8; ++kk) {
                xpart0 += sr[kk][0] * dsr[kk][0] + sr[kk][1] * dsr[kk][1];
                xpart1 += sr[kk][2] * dsr[kk][2] + sr[kk][3] * dsr[kk][3];
                const uint32_t sa[4] = {tf32(sr[kk][0]), tf32(sr[kk][2]), tf32(sr[kk][1]), tf32(sr[kk][3])};
                const uint32_t da[4] = {tf32(dsr[kk][0]), tf32(dsr[kk][2]), tf32(dsr[kk][1]), tf32(dsr[kk][3])};
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
                    uint32_t byq[2], bvq[2];
                    opnd2(dyt + (8 * nt + g) * LDT + 8 * kk + 2 * tig, byq[0], byq[1]);
                    opnd2(vt + (8 * nt + g) * LDT + 8 * kk + 2 * tig, bvq[0], bvq[1]);
                    mma(ra[nt], sa, byq);
                    mma(ka1[nt], da, bvq);
                }
            }
            xpart0 += shfl_xor(xpart0, 1);
            xpart0 += shfl_xor(xpart0, 2);
            xpart1 += shfl_xor(xpart1, 1);
            xpart1 += shfl_xor(xpart1, 2);
            if (tig == 0) {
                xc[j0] = dt[j0] * xpart0;
                xc[j0 + 8] = dt[j0 + 8] * xpart1;
            }
            uint32_t qa[2][4];
#pragma unroll
            for (int ks = 0; ks < 2; ++ks) {
                qa[ks][0] = f_bits(qd[(8 * ks + tig) * LDF + j0]);
                qa[ks][1] = f_bits(qd[(8 * ks + tig) * LDF + j0 + 8]);
                qa[ks][2] = f_bits(qd[(8 * ks + tig + 4) * LDF + j0]);
                qa[ks][3] = f_bits(qd[(8 * ks + tig + 4) * LDF + j0 + 8]);
            }
            if (fast) {
#pragma unroll
                for (int ks = 0; ks < 2; ++ks)
#pragma unroll
                    for (int nt = 0; nt < 2; ++nt) {
                        const uint32_t bq[2] = {tf32(dam[(8 * ks + tig) * LDA + 8 * nt + g]),
                                                tf32(dam[(8 * ks + tig + 4) * LDA + 8 * nt + g])};
                        mma(ka2[nt], qa[ks], bq);
                    }
            }
            const int ic = 16 * warp;   // this warp's columns of dv
#pragma unroll
            for (int ks = 0; ks < 2; ++ks) {
                const uint32_t aa[4] = {tf32(af[(8 * ks + tig) * LDA + g]), tf32(af[(8 * ks + tig) * LDA + g + 8]),
                                        tf32(af[(8 * ks + tig + 4) * LDA + g]), tf32(af[(8 * ks + tig + 4) * LDA + g + 8])};
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
                    const int i = ic + 8 * nt + g;
                    const uint32_t bq[2] = {opnd(dyt[(8 * ks + tig) * LDT + i]), opnd(dyt[(8 * ks + tig + 4) * LDT + i])};
                    mma(va[nt], aa, bq);
                }
            }
#pragma unroll
            for (int kk = 0; kk < N / 8; ++kk) {
                const float2 a02 = ld2(kd + g * LDF + 8 * kk + 2 * tig), a13 = ld2(kd + (g + 8) * LDF + 8 * kk + 2 * tig);
                const uint32_t a[4] = {f_bits(a02.x), f_bits(a13.x), f_bits(a02.y), f_bits(a13.y)};
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
                    const float2 bb = ld2(dss + (ic + 8 * nt + g) * LDF + 8 * kk + 2 * tig);
                    const uint32_t bq[2] = {tf32(bb.x), tf32(bb.y)};
                    mma(va[nt], a, bq);
                }
            }
            // dS <- diag(decay over the chunk) dS + (r e_q)^T dy
            {
                const float d0 = dt[j0], d1 = dt[j0 + 8];
#pragma unroll
                for (int nt = 0; nt < N / 8; ++nt) {
                    dsr[nt][0] *= d0; dsr[nt][1] *= d0; dsr[nt][2] *= d1; dsr[nt][3] *= d1;
#pragma unroll
                    for (int ks = 0; ks < 2; ++ks) {
                        const uint32_t bq[2] = {opnd(dyt[(8 * ks + tig) * LDT + 8 * nt + g]),
                                                opnd(dyt[(8 * ks + tig + 4) * LDT + 8 * nt + g])};
                        mma(dsr[nt], qa[ks], bq);
                    }
                }
            }
            // epilogue: the state parts scaled by their decay factors; the factored intra part of dk
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int j = j0 + 8 * (e >> 1), t = 8 * nt + 2 * tig + (e & 1);
                    drs[t * LDE + j] = eq[t * LDE + j] * ra[nt][e];
                    dks[t * LDE + j] = ek[t * LDE + j] * ka1[nt][e];
                    if (fast) dki[t * LDE + j] = ei[t * LDE + j] * ka2[nt][e];
                    out_v[(g + 8 * (e >> 1)) * LDT + ic + 8 * nt + 2 * tig + (e & 1)] = from_f<T>(va[nt][e]);
                }
            sync();
            store_ds_transposed();

            // --- per channel: the log-decay gradient, bonus terms, du
            {
                float mine = 0.f;   // half hf = 1 publishes sum r drs, half 0 sum k dks
#pragma unroll
                for (int t = 0; t < CH; ++t) {
                    if ((t >> 3) != hf) continue;
                    mine += hf ? to_f(rt[t * LDT + jc]) * drs[t * LDE + jc] : to_f(kt[t * LDT + jc]) * dks[t * LDE + jc];
                }
                xch[hf * N + jc] = mine;
                sync();
                const float other = xch[(1 - hf) * N + jc], x_out = xc[jc];

                float dg[CH], drintra[CH];
                if (fast) {
                    // crossing pairs through the factored operands: for each m, with
                    // c_t = sum_{s<m} dA[t,s] kf_s (a prefix over s), crossing(m) = sum_{t>m} qd_t c_t;
                    // c_t at m = t is also the intra part of dr_t (before e_q)
                    float qv[CH], cpre[CH];
#pragma unroll
                    for (int t = 0; t < CH; ++t) { qv[t] = qd[t * LDF + jc]; cpre[t] = 0.f; }
#pragma unroll
                    for (int m = 0; m < CH; ++m) {
                        if ((m >> 3) == hf) {
                            float cr0 = 0.f, cr1 = 0.f;
#pragma unroll
                            for (int t = m + 1; t < CH; ++t) (t & 1 ? cr1 : cr0) += qv[t] * cpre[t];
                            dg[m] = cr0 + cr1;
                            drintra[m] = eq[m * LDE + jc] * cpre[m];
                        }
                        if (m < CH - 1 && (hf == 1 || m < 7)) {   // the first half is done after m = 7
                            const float kfm = kf[m * LDF + jc];
                            float col[CH];
#pragma unroll
                            for (int t4 = 0; t4 < CH; t4 += 4) {
                                const float4 x = *reinterpret_cast<const float4*>(dat + m * LDA + t4);
                                col[t4] = x.x; col[t4 + 1] = x.y; col[t4 + 2] = x.z; col[t4 + 3] = x.w;
                            }
#pragma unroll
                            for (int t = m + 1; t < CH; ++t) cpre[t] += col[t] * kfm;
                        }
                    }
                } else {
                    // e_k is no longer needed: its tile takes the result
                    exact_crossing<N>(rt, kt, g2s, dam, LDT, jc, 8 * hf, ek + jc, LDE);
#pragma unroll
                    for (int m = 0; m < CH; ++m)
                        if ((m >> 3) == hf) {
                            dg[m] = ek[m * LDE + jc];
                            drintra[m] = dri[m * LDE + jc];
                        }
                }
                // s before the chunk: sum_{t>m} r drs; t after it: sum_{s<m} k dks
                float pre = hf ? other : 0.f;
#pragma unroll
                for (int m = 0; m < CH; ++m) {
                    if ((m >> 3) != hf) continue;
                    dg[m] += pre + x_out;
                    pre += to_f(kt[m * LDT + jc]) * dks[m * LDE + jc];
                }
                float suf = hf ? 0.f : other;
                const float uj = us[jc];
#pragma unroll
                for (int m = CH - 1; m >= 0; --m) {
                    if ((m >> 3) != hf) continue;
                    const float rv = to_f(rt[m * LDT + jc]), kv = to_f(kt[m * LDT + jc]), vd = vdy[m];
                    const float drv = drs[m * LDE + jc];
                    out_w[m * LDW + jc] = from_f<TW>((dg[m] + suf) * g2s[m * N + jc] * LN2);
                    suf += rv * drv;
                    out_r[m * LDT + jc] = from_f<T>(drv + drintra[m] + uj * kv * vd);
                    out_k[m * LDT + jc] = from_f<T>(dks[m * LDE + jc] + dki[m * LDE + jc] + uj * rv * vd);
                    duacc += rv * kv * vd;
                }
            }
            sync();
            store_tile<N>(p.dr + base, out_r, LDT, rs, t0, len, tid, NT);
            store_tile<N>(p.dk + base, out_k, LDT, rs, t0, len, tid, NT);
            store_tile<N>(p.dv + base, out_v, LDT, rs, t0, len, tid, NT);
            store_tile<N>(p.dw + base, out_w, LDW, rs, t0, len, tid, NT);
        }
        if (nsg < 0) break;
        sg = nsg;
        pos = npos;
        bsel ^= 1;
    }

    if (p.ds0) {
        float* out = p.ds0 + (long long)bh * N * N;
#pragma unroll
        for (int nt = 0; nt < N / 8; ++nt) {
            *reinterpret_cast<float2*>(out + j0 * N + 8 * nt + 2 * tig) = make_float2(dsr[nt][0], dsr[nt][1]);
            *reinterpret_cast<float2*>(out + (j0 + 8) * N + 8 * nt + 2 * tig) = make_float2(dsr[nt][2], dsr[nt][3]);
        }
    }
    sync();
    if (hf == 1) xch[jc] = duacc;
    sync();
    if (hf == 0) p.du[(long long)bh * N + jc] = duacc + xch[jc];
}

}  // namespace wkv6
