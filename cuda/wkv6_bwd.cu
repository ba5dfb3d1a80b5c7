// Launcher of the WKV6 backward kernel (cuda/wkv6_bwd.cuh): picks the instantiation for the head
// size and dtypes, raises the dynamic shared-memory limit, launches one block per (batch row, head).
#include "wkv6_bwd.cuh"
#include "wkv6_launch.h"

namespace wkv6 {

template <int N, class T, class TW>
static cudaError_t run_backward(const BackwardArgs& a, cudaStream_t stream) {
    BwdParams<T, TW> p;
    p.r = static_cast<const T*>(a.r);
    p.k = static_cast<const T*>(a.k);
    p.v = static_cast<const T*>(a.v);
    p.w = static_cast<const TW*>(a.w);
    p.u = a.u;
    p.ckpt = a.ckpt;
    p.dy = static_cast<const T*>(a.dy);
    p.dsf = a.dsf;
    p.scratch = a.scratch;
    p.dr = static_cast<T*>(a.dr);
    p.dk = static_cast<T*>(a.dk);
    p.dv = static_cast<T*>(a.dv);
    p.dw = static_cast<TW*>(a.dw);
    p.du = a.du;
    p.ds0 = a.ds0;
    p.B = a.B;
    p.len = a.T;
    p.H = a.H;
    constexpr int bytes = BwdLayout<N, T, TW>::bytes;
    auto kernel = wkv6_backward_kernel<N, T, TW>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (err != cudaSuccess) return err;
    kernel<<<a.B * a.H, Geometry<N>::NT, bytes, stream>>>(p);
    return cudaGetLastError();
}

template <int N>
static cudaError_t dispatch_backward(const BackwardArgs& a, cudaStream_t stream) {
    if (a.t == DType::bf16 && a.tw == DType::bf16) return run_backward<N, bf16, bf16>(a, stream);
    if (a.t == DType::bf16) return run_backward<N, bf16, float>(a, stream);
    return run_backward<N, float, float>(a, stream);
}

cudaError_t launch_backward(const BackwardArgs& a, cudaStream_t stream) {
    if (!supported(a.N, a.t, a.tw)) return cudaErrorInvalidValue;
    if (a.N == 16) return dispatch_backward<16>(a, stream);
    return a.N == 32 ? dispatch_backward<32>(a, stream) : dispatch_backward<64>(a, stream);
}

}  // namespace wkv6
