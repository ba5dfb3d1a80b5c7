// PyTorch binding of the project's WKV6 kernels (cuda/wkv6_fwd.cu, cuda/wkv6_bwd.cu): checks the
// tensors, allocates outputs and calls the launchers on the current stream. The autograd wrapper is
// src/conrwkv/ops/wkv6_cuda.py; the op is the recurrence of docs/reference.md, "WKV recurrence".
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "wkv6_launch.h"

namespace {

wkv6::DType dtype_of(const at::Tensor& x, const char* name) {
    if (x.scalar_type() == at::kBFloat16) return wkv6::DType::bf16;
    if (x.scalar_type() == at::kFloat) return wkv6::DType::f32;
    TORCH_CHECK(false, "wkv6 cuda: ", name, " has dtype ", x.scalar_type(), "; expected bfloat16 or float32");
}

void check_input(const at::Tensor& x, const char* name, const at::Tensor& like) {
    TORCH_CHECK(x.is_cuda(), "wkv6 cuda: ", name, " is not a CUDA tensor");
    TORCH_CHECK(x.device() == like.device(), "wkv6 cuda: ", name, " is on ", x.device(), " but r is on ",
                like.device());
    TORCH_CHECK(x.is_contiguous(), "wkv6 cuda: ", name, " is not contiguous");
    TORCH_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0, "wkv6 cuda: ", name,
                " is not 16-byte aligned");
}

void check_cuda(cudaError_t err, const char* what) {
    TORCH_CHECK(err == cudaSuccess, "wkv6 cuda: ", what, " failed: ", cudaGetErrorString(err));
}

// y, final state (empty unless want_final), stored states for the backward (empty unless want_ckpt)
std::vector<at::Tensor> forward(const at::Tensor& r, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
                                const at::Tensor& u, const c10::optional<at::Tensor>& s0, bool want_final,
                                bool want_ckpt) {
    TORCH_CHECK(r.dim() == 4, "wkv6 cuda: r must be [B, T, H, N]");
    const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
    for (const auto& [x, name] : {std::pair{k, "k"}, std::pair{v, "v"}, std::pair{w, "w"}})
        TORCH_CHECK(x.sizes() == r.sizes(), "wkv6 cuda: ", name, " must have the shape of r");
    for (const auto& [x, name] : {std::pair{r, "r"}, std::pair{k, "k"}, std::pair{v, "v"}, std::pair{w, "w"},
                                  std::pair{u, "u"}})
        check_input(x, name, r);
    const wkv6::DType t = dtype_of(r, "r"), tw = dtype_of(w, "w");
    TORCH_CHECK(k.scalar_type() == r.scalar_type() && v.scalar_type() == r.scalar_type(),
                "wkv6 cuda: r, k and v must share a dtype");
    TORCH_CHECK(u.scalar_type() == at::kFloat && u.numel() == H * N, "wkv6 cuda: u must be float32 [H, N]");
    TORCH_CHECK(wkv6::supported(int(N), t, tw), "wkv6 cuda: head size ", N, " with these dtypes is not built");
    TORCH_CHECK(T >= 1 && B * H <= INT32_MAX && T <= INT32_MAX, "wkv6 cuda: unsupported sizes");
    long long s0_bstride = 0;
    if (s0) {
        check_input(*s0, "state", r);
        TORCH_CHECK(s0->scalar_type() == at::kFloat, "wkv6 cuda: state must be float32");
        const bool shared = s0->sizes() == at::IntArrayRef({H, N, N});
        TORCH_CHECK(shared || s0->sizes() == at::IntArrayRef({B, H, N, N}),
                    "wkv6 cuda: state must be [H, N, N] or [B, H, N, N]");
        s0_bstride = shared ? 0 : H * N * N;
    }
    const c10::cuda::CUDAGuard guard(r.device());
    auto f32 = r.options().dtype(at::kFloat);
    at::Tensor y = at::empty_like(r);
    at::Tensor s_final = want_final ? at::empty({B, H, N, N}, f32) : at::empty({0}, f32);
    at::Tensor ckpt = want_ckpt ? at::empty({B, H, wkv6::checkpoints(int(T)), N, N}, f32) : at::empty({0}, f32);
    wkv6::ForwardArgs a{r.data_ptr(), k.data_ptr(), v.data_ptr(), w.data_ptr(), u.data_ptr<float>(),
                        s0 ? s0->data_ptr<float>() : nullptr, s0_bstride, y.data_ptr(),
                        want_final ? s_final.data_ptr<float>() : nullptr,
                        want_ckpt ? ckpt.data_ptr<float>() : nullptr,
                        int(B), int(T), int(H), int(N), t, tw};
    check_cuda(wkv6::launch_forward(a, c10::cuda::getCurrentCUDAStream().stream()), "forward kernel launch");
    return {y, s_final, ckpt};
}

// dr, dk, dv, dw, du per batch row [B, H, N], d(initial state) per batch row (empty unless want_ds0)
std::vector<at::Tensor> backward(const at::Tensor& r, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
                                 const at::Tensor& u, const at::Tensor& ckpt, const at::Tensor& dy,
                                 const c10::optional<at::Tensor>& dsf, bool want_ds0) {
    const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
    for (const auto& [x, name] : {std::pair{r, "r"}, std::pair{k, "k"}, std::pair{v, "v"}, std::pair{w, "w"},
                                  std::pair{u, "u"}, std::pair{ckpt, "stored states"}, std::pair{dy, "dy"}})
        check_input(x, name, r);
    TORCH_CHECK(dy.sizes() == r.sizes() && dy.scalar_type() == r.scalar_type(),
                "wkv6 cuda: dy must match r in shape and dtype");
    TORCH_CHECK(ckpt.numel() == B * H * wkv6::checkpoints(int(T)) * N * N, "wkv6 cuda: stored states have the wrong size");
    if (dsf) {
        check_input(*dsf, "final-state gradient", r);
        TORCH_CHECK(dsf->scalar_type() == at::kFloat && dsf->numel() == B * H * N * N,
                    "wkv6 cuda: the final-state gradient must be float32 [B, H, N, N]");
    }
    const wkv6::DType t = dtype_of(r, "r"), tw = dtype_of(w, "w");
    const c10::cuda::CUDAGuard guard(r.device());
    auto f32 = r.options().dtype(at::kFloat);
    at::Tensor dr = at::empty_like(r), dk = at::empty_like(k), dv = at::empty_like(v), dw = at::empty_like(w);
    at::Tensor du = at::empty({B, H, N}, f32);
    at::Tensor ds0 = want_ds0 ? at::empty({B, H, N, N}, f32) : at::empty({0}, f32);
    at::Tensor scratch = at::empty({B * H * 2 * N * N}, f32);
    wkv6::BackwardArgs a{r.data_ptr(), k.data_ptr(), v.data_ptr(), w.data_ptr(), u.data_ptr<float>(),
                         ckpt.data_ptr<float>(), dy.data_ptr(), dsf ? dsf->data_ptr<float>() : nullptr,
                         scratch.data_ptr<float>(), dr.data_ptr(), dk.data_ptr(), dv.data_ptr(), dw.data_ptr(),
                         du.data_ptr<float>(), want_ds0 ? ds0.data_ptr<float>() : nullptr,
                         int(B), int(T), int(H), int(N), t, tw};
    check_cuda(wkv6::launch_backward(a, c10::cuda::getCurrentCUDAStream().stream()), "backward kernel launch");
    return {dr, dk, dv, dw, du, ds0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "The project's WKV6 CUDA kernels (RWKV-6 time mixing): forward and backward";
    m.def("forward", &forward, "WKV6 forward: y, final state, stored states");
    m.def("backward", &backward, "WKV6 backward: dr, dk, dv, dw, du per batch row, d(initial state) per batch row");
}
