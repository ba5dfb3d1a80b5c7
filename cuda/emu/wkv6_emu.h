// Host emulation of the few CUDA features the WKV6 kernels use, so that cuda/wkv6_fwd.cuh and
// cuda/wkv6_bwd.cuh compile as plain C++ (with WKV6_EMULATE defined) and run on a CPU.
//
// Every thread of a block is a coroutine (ucontext). Threads run one at a time until they reach a
// barrier: __syncthreads for the block, or a warp-collective operation (shuffle, mma.sync), which
// gathers all 32 lanes of the warp. Between block barriers the warps run one at a time in random
// order, so a missing barrier shows up as a wrong or changing result rather than passing silently.
// mma.sync follows the PTX fragment layout of m16n8k8 with tf32 operands (see wkv6_common.cuh);
// cp.async copies at once. This is a test harness: it checks indexing, layouts and barriers, not
// speed, and is not part of the built extension.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
struct uint4 { uint32_t x, y, z, w; };
struct emu_dim3 { unsigned x, y, z; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
using std::min;

namespace wkv6emu {

enum class Wait { none, block, warp, done };

struct Thread {
    ucontext_t ctx;
    std::vector<char> stack;
    unsigned tid = 0;
    Wait wait = Wait::none;
};

struct Warp {
    int arrived = 0;
    uint32_t slot[32][8];   // values each lane contributes to the collective in progress
};

struct Block {
    unsigned bid = 0;
    std::vector<Thread> threads;
    std::vector<Warp> warps;
    std::vector<unsigned char> smem;
    ucontext_t scheduler;
    std::function<void()> body;
    int sync_pred = 0, sync_result = 0;
    std::mt19937 rng{12345};
};

inline Block*& current_block() { static Block* b = nullptr; return b; }
inline Thread*& current_thread() { static Thread* t = nullptr; return t; }

inline unsigned char* block_smem() { return current_block()->smem.data(); }

// Give control back to the scheduler until the barrier this thread waits at has been released.
inline void yield_waiting(Wait w) {
    Thread* t = current_thread();
    t->wait = w;
    swapcontext(&t->ctx, &current_block()->scheduler);
}

inline void sync() { yield_waiting(Wait::block); }

inline int sync_or(int pred) {
    current_block()->sync_pred |= pred ? 1 : 0;
    yield_waiting(Wait::block);
    return current_block()->sync_result;
}

inline unsigned lane() { return current_thread()->tid & 31u; }
inline Warp& warp() { return current_block()->warps[current_thread()->tid >> 5]; }

// A warp collective: deposit, wait for the 32 lanes, read, wait again before the slots are reused.
inline void warp_barrier() { yield_waiting(Wait::warp); }

inline float shfl_xor(float v, int mask) {
    Warp& w = warp();
    std::memcpy(&w.slot[lane()][0], &v, 4);
    warp_barrier();
    float r;
    std::memcpy(&r, &w.slot[lane() ^ unsigned(mask)][0], 4);
    warp_barrier();
    return r;
}

inline float tf32_value(uint32_t u) {
    u &= 0xffffe000u;   // the tensor cores read the top 19 bits of a tf32 operand
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline uint32_t tf32(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u += 0x1000u;   // round to nearest, ties away from zero
    return u & 0xffffe000u;
}

inline void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    Warp& w = warp();
    const unsigned me = lane();
    for (int i = 0; i < 4; ++i) w.slot[me][i] = a[i];
    w.slot[me][4] = b[0];
    w.slot[me][5] = b[1];
    warp_barrier();
    float A[16][8], B[8][8];
    for (unsigned l = 0; l < 32; ++l) {
        const unsigned g = l >> 2, c = l & 3;
        A[g][c] = tf32_value(w.slot[l][0]);
        A[g + 8][c] = tf32_value(w.slot[l][1]);
        A[g][c + 4] = tf32_value(w.slot[l][2]);
        A[g + 8][c + 4] = tf32_value(w.slot[l][3]);
        B[c][g] = tf32_value(w.slot[l][4]);
        B[c + 4][g] = tf32_value(w.slot[l][5]);
    }
    warp_barrier();
    const unsigned g = me >> 2, c = me & 3;
    for (int e = 0; e < 4; ++e) {
        const unsigned row = g + 8 * (e >> 1), col = 2 * c + (e & 1);
        float acc = d[e];
        for (int k = 0; k < 8; ++k) acc += A[row][k] * B[k][col];
        d[e] = acc;
    }
}

inline float ex2(float x) {
    const float y = std::exp2(x);
    return y < 1.17549435e-38f ? 0.f : y;   // .ftz
}

inline void cp_async16(void* dst, const void* src, bool full) {
    if (full) std::memcpy(dst, src, 16);
    else std::memset(dst, 0, 16);
}
inline void cp_async_commit() {}
inline void cp_async_wait_all() {}

inline void thread_entry() {
    current_block()->body();
    current_thread()->wait = Wait::done;
    swapcontext(&current_thread()->ctx, &current_block()->scheduler);
}

// Run `body` as a grid of `grid` blocks of `nthreads` threads with `smem_bytes` of shared memory.
inline void launch(int grid, int nthreads, size_t smem_bytes, std::function<void()> body) {
    constexpr size_t stack_bytes = 256 * 1024;
    for (int bid = 0; bid < grid; ++bid) {
        Block blk;
        blk.bid = unsigned(bid);
        blk.body = body;
        blk.smem.assign(smem_bytes, 0xff);   // poison: reading unwritten shared memory gives NaN
        blk.threads.resize(nthreads);
        blk.warps.resize((nthreads + 31) / 32);
        blk.rng.seed(1000u + unsigned(bid));
        current_block() = &blk;
        for (int t = 0; t < nthreads; ++t) {
            Thread& th = blk.threads[t];
            th.tid = unsigned(t);
            th.stack.resize(stack_bytes);
            getcontext(&th.ctx);
            th.ctx.uc_stack.ss_sp = th.stack.data();
            th.ctx.uc_stack.ss_size = stack_bytes;
            th.ctx.uc_link = nullptr;
            makecontext(&th.ctx, thread_entry, 0);
        }
        const int nwarps = int(blk.warps.size());
        std::vector<int> warp_order(nwarps), lanes(32);
        for (int w = 0; w < nwarps; ++w) warp_order[w] = w;
        for (int l = 0; l < 32; ++l) lanes[l] = l;
        while (true) {
            // Between two block barriers the warps run one after another, in a random order, each
            // as far as it can: a warp that reads what another warp writes without a barrier in
            // between then sees stale data, as it may on the hardware. Lanes run in random order.
            std::shuffle(warp_order.begin(), warp_order.end(), blk.rng);
            for (int w : warp_order) {
                while (true) {
                    std::shuffle(lanes.begin(), lanes.end(), blk.rng);
                    bool ran = false;
                    for (int l : lanes) {
                        Thread& th = blk.threads[w * 32 + l];
                        if (th.wait != Wait::none) continue;
                        current_thread() = &th;
                        swapcontext(&blk.scheduler, &th.ctx);
                        ran = true;
                    }
                    int at_warp = 0, blocked = 0;
                    for (int l = 0; l < 32; ++l) {
                        const Wait st = blk.threads[w * 32 + l].wait;
                        at_warp += st == Wait::warp;
                        blocked += st != Wait::none;
                    }
                    if (at_warp == 32) {
                        for (int l = 0; l < 32; ++l) blk.threads[w * 32 + l].wait = Wait::none;
                    } else if (!ran && blocked == 32) {
                        if (at_warp > 0)
                            throw std::runtime_error("emulator: warp collective reached by only part of warp " +
                                                     std::to_string(w) + " in block " + std::to_string(bid));
                        break;
                    }
                }
            }
            int done = 0, at_block = 0;
            for (auto& th : blk.threads) {
                done += th.wait == Wait::done;
                at_block += th.wait == Wait::block;
            }
            if (done == nthreads) break;
            if (at_block == nthreads) {
                blk.sync_result = blk.sync_pred;
                blk.sync_pred = 0;
                for (auto& th : blk.threads) th.wait = Wait::none;
            } else {
                throw std::runtime_error("emulator: __syncthreads not reached by every thread of block " +
                                         std::to_string(bid));
            }
        }
        current_block() = nullptr;
    }
}

inline emu_dim3 thread_idx() { return {current_thread()->tid, 0, 0}; }
inline emu_dim3 block_idx() { return {current_block()->bid, 0, 0}; }

}  // namespace wkv6emu

#define threadIdx (wkv6emu::thread_idx())
#define blockIdx (wkv6emu::block_idx())
