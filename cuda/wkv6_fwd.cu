// Launcher of the WKV6 forward kernel (cuda/wkv6_fwd.cuh): picks the instantiation for the head
// size and dtypes, raises the dynamic shared-memory limit, launches one block per (batch row, head).
#include "wkv6_fwd.cuh"
#include "wkv6_launch.h"

namespace wkv6 {

static_assert(CH * SEG == 64, "checkpoints() in wkv6_launch.h assumes one stored state per 64 steps");

// Head size 128 is not built: its backward would need 230 KB of shared memory per block.
bool supported(int N, DType t, DType tw) {
    return (N == 16 || N == 32 || N == 64) && !(t == DType::f32 && tw == DType::bf16);
}

template <int N, class T, class TW>
static cudaError_t run_forward(const ForwardArgs& a, cudaStream_t stream) {
    FwdParams<T, TW> p;
    p.r = static_cast<const T*>(a.r);
    p.k = static_cast<const T*>(a.k);
    p.v = static_cast<const T*>(a.v);
    p.w = static_cast<const TW*>(a.w);
    p.u = a.u;
    p.s0 = a.s0;
    p.s0_bstride = a.s0_bstride;
    p.y = static_cast<T*>(a.y);
    p.s_final = a.s_final;
    p.ckpt = a.ckpt;
    p.B = a.B;
    p.len = a.T;
    p.H = a.H;
    constexpr int bytes = FwdLayout<N, T, TW>::bytes;
    auto kernel = wkv6_forward_kernel<N, T, TW>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (err != cudaSuccess) return err;
    kernel<<<a.B * a.H, Geometry<N>::NT, bytes, stream>>>(p);
    return cudaGetLastError();
}

template <int N>
static cudaError_t dispatch_forward(const ForwardArgs& a, cudaStream_t stream) {
    if (a.t == DType::bf16 && a.tw == DType::bf16) return run_forward<N, bf16, bf16>(a, stream);
    if (a.t == DType::bf16) return run_forward<N, bf16, float>(a, stream);
    return run_forward<N, float, float>(a, stream);
}

cudaError_t launch_forward(const ForwardArgs& a, cudaStream_t stream) {
    if (!supported(a.N, a.t, a.tw)) return cudaErrorInvalidValue;
    if (a.N == 16) return dispatch_forward<16>(a, stream);
    return a.N == 32 ? dispatch_forward<32>(a, stream) : dispatch_forward<64>(a, stream);
}

}  // namespace wkv6
