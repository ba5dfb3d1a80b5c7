// C entry points that run the WKV6 kernels under the host emulator (wkv6_emu.h), for the CPU tests
// in tests/test_wkv6_cuda.py. Build:  g++ -std=c++17 -O1 -fno-strict-aliasing -DWKV6_EMULATE
// -shared -fPIC cuda/emu/wkv6_emu_api.cpp -o libwkv6emu.so. Arguments mirror wkv6_launch.h;
// dtype codes: 0 bf16, 1 fp32. Each function returns 0, or 1 after writing an error message.
#include <cstdio>
#include <exception>

#include "../wkv6_bwd.cuh"
#include "../wkv6_fwd.cuh"

namespace {

char last_error[512];

template <class F>
int guarded(F&& f) {
    try {
        f();
        return 0;
    } catch (const std::exception& e) {
        std::snprintf(last_error, sizeof(last_error), "%s", e.what());
        return 1;
    }
}

template <int N, class T, class TW>
void forward(const void* r, const void* k, const void* v, const void* w, const float* u, const float* s0,
             long long s0_bstride, void* y, float* s_final, float* ckpt, int B, int len, int H) {
    wkv6::FwdParams<T, TW> p{static_cast<const T*>(r), static_cast<const T*>(k), static_cast<const T*>(v),
                             static_cast<const TW*>(w), u, s0, s0_bstride, static_cast<T*>(y), s_final, ckpt,
                             B, len, H};
    wkv6emu::launch(B * H, wkv6::Geometry<N>::NT, wkv6::FwdLayout<N, T, TW>::bytes,
                    [&] { wkv6::wkv6_forward_kernel<N, T, TW>(p); });
}

template <int N, class T, class TW>
void backward(const void* r, const void* k, const void* v, const void* w, const float* u, const float* ckpt,
              const void* dy, const float* dsf, float* scratch, void* dr, void* dk, void* dv,
              void* dw, float* du, float* ds0, int B, int len, int H) {
    wkv6::BwdParams<T, TW> p{static_cast<const T*>(r), static_cast<const T*>(k), static_cast<const T*>(v),
                             static_cast<const TW*>(w), u, ckpt, static_cast<const T*>(dy), dsf, scratch,
                             static_cast<T*>(dr), static_cast<T*>(dk), static_cast<T*>(dv), static_cast<TW*>(dw),
                             du, ds0, B, len, H};
    wkv6emu::launch(B * H, wkv6::Geometry<N>::NT, wkv6::BwdLayout<N, T, TW>::bytes,
                    [&] { wkv6::wkv6_backward_kernel<N, T, TW>(p); });
}

template <template <int, class, class> class Op, class... A>
void dispatch(int N, int t, int tw, A... args) {
    using wkv6::bf16;
    if (N != 16 && N != 32 && N != 64) throw std::runtime_error("emulated head sizes: 16, 32, 64");
    if (t == 1 && tw == 0) throw std::runtime_error("fp32 r with bf16 w is not a kernel instantiation");
    if (N == 16) {
        if (t == 0 && tw == 0) Op<16, bf16, bf16>::run(args...);
        else if (t == 0) Op<16, bf16, float>::run(args...);
        else Op<16, float, float>::run(args...);
    } else if (N == 32) {
        if (t == 0 && tw == 0) Op<32, bf16, bf16>::run(args...);
        else if (t == 0) Op<32, bf16, float>::run(args...);
        else Op<32, float, float>::run(args...);
    } else {
        if (t == 0 && tw == 0) Op<64, bf16, bf16>::run(args...);
        else if (t == 0) Op<64, bf16, float>::run(args...);
        else Op<64, float, float>::run(args...);
    }
}

template <int N, class T, class TW>
struct Fwd {
    template <class... A>
    static void run(A... a) { forward<N, T, TW>(a...); }
};
template <int N, class T, class TW>
struct Bwd {
    template <class... A>
    static void run(A... a) { backward<N, T, TW>(a...); }
};

}  // namespace

extern "C" {

const char* wkv6_emu_error() { return last_error; }

int wkv6_emu_forward(int N, int t, int tw, const void* r, const void* k, const void* v, const void* w,
                     const float* u, const float* s0, long long s0_bstride, void* y, float* s_final, float* ckpt,
                     int B, int T, int H) {
    return guarded([&] { dispatch<Fwd>(N, t, tw, r, k, v, w, u, s0, s0_bstride, y, s_final, ckpt, B, T, H); });
}

int wkv6_emu_backward(int N, int t, int tw, const void* r, const void* k, const void* v, const void* w,
                      const float* u, const float* ckpt, const void* dy, const float* dsf,
                      float* scratch, void* dr, void* dk, void* dv, void* dw, float* du, float* ds0, int B, int T,
                      int H) {
    return guarded([&] {
        dispatch<Bwd>(N, t, tw, r, k, v, w, u, ckpt, dy, dsf, scratch, dr, dk, dv, dw, du, ds0, B, T, H);
    });
}

}  // extern "C"
