// Host-side entry points of the WKV6 kernels (cuda/wkv6_fwd.cu, cuda/wkv6_bwd.cu), free of torch
// types so that the kernels build and link on their own; cuda/wkv6_binding.cpp checks tensors and
// calls these. Shapes: r, k, v, w, y and the gradients are [B, T, H, N] contiguous.
#pragma once

#include <cuda_runtime.h>

namespace wkv6 {

enum class DType { bf16, f32 };

struct ForwardArgs {
    const void* r;
    const void* k;
    const void* v;
    const void* w;
    const float* u;
    const float* s0;          // nullptr: zero initial state
    long long s0_bstride;     // 0 when s0 is shared [H, N, N]
    void* y;
    float* s_final;           // nullptr: not wanted
    float* ckpt;              // nullptr: no backward will follow
    int B, T, H, N;
    DType t, tw;              // dtype of r, k, v, y and of w
};

struct BackwardArgs {
    const void* r;
    const void* k;
    const void* v;
    const void* w;
    const float* u;
    const float* ckpt;
    const void* dy;
    const float* dsf;         // nullptr: the final state gets no gradient
    float* scratch;           // B * H * 2 * N * N floats
    void* dr;
    void* dk;
    void* dv;
    void* dw;
    float* du;                // [B, H, N]
    float* ds0;               // nullptr: no initial-state gradient wanted
    int B, T, H, N;
    DType t, tw;
};

// Number of stored states per (b, h) for a sequence of T steps.
inline int checkpoints(int T) { return (T + 63) / 64; }

bool supported(int N, DType t, DType tw);
cudaError_t launch_forward(const ForwardArgs& a, cudaStream_t stream);
cudaError_t launch_backward(const BackwardArgs& a, cudaStream_t stream);

}  // namespace wkv6
