// cudacpu: nvcuda::wmma (warp matrix multiply-accumulate) for CPU execution, m16n16k16 with
// __half inputs and float accumulators only -- what the HollowAttention kernel v2 uses.
//
// CUDA leaves the mapping of fragment elements to lanes unspecified ("opaque"), so any
// consistent mapping is valid; this one is deliberately strided: lane l holds the tile elements
// (row-major index) l, l + 32, l + 64, ... A kernel that assumes a mapping (reads x[i] as row
// i / 2, say) computes wrong results here, which the harness detects.
//
// load/store/fill touch only the calling lane's elements and then __syncwarp() (the real ones
// are warp-collective: a lane that skips them is a barrier divergence here). mma_sync gathers
// the warp's A and B through a per-warp scratch between two __syncwarp()s and each lane computes
// its own elements of D = A B + C, products and sums in float (tensor cores multiply fp16
// exactly and accumulate in fp32; rounding of the sum order differs from a GPU's).
#ifndef CUDACPU_MMA_H
#define CUDACPU_MMA_H

#include "cuda_fp16.h"
#include "cuda_runtime.h"

namespace nvcuda
{
namespace wmma
{

struct matrix_a
{
};
struct matrix_b
{
};
struct accumulator
{
};
struct row_major
{
};
struct col_major
{
};
enum layout_t
{
    mem_row_major,
    mem_col_major
};

constexpr int kTile = 16;
constexpr int kPerLane = kTile * kTile / 32;

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment
{
    static_assert(M == 16 && N == 16 && K == 16, "cudacpu wmma: only m16n16k16 is emulated");

public:
    static constexpr int num_elements = kPerLane;
    T x[kPerLane];
};

namespace detail
{

//! Row-major tile index of element i of the calling lane.
inline int tile_index(int i)
{
    return static_cast<int>(::cudacpu::tls_thread->lane) + 32 * i;
}

inline float to_float(float v)
{
    return v;
}

inline float to_float(__half v)
{
    return __half2float(v);
}

template <typename T>
inline T from_float(float v);

template <>
inline float from_float<float>(float v)
{
    return v;
}

template <>
inline __half from_float<__half>(float v)
{
    return __float2half_rn(v);
}

//! Element (r, c) of a matrix at p with leading dimension ldm.
template <typename T>
inline T const& at(T const* p, int r, int c, unsigned ldm, bool col_major)
{
    return col_major ? p[static_cast<std::size_t>(c) * ldm + r] : p[static_cast<std::size_t>(r) * ldm + c];
}

struct WarpScratch
{
    float a[32][kTile * kTile];
    float b[32][kTile * kTile];
};

inline WarpScratch& scratch()
{
    static thread_local WarpScratch s; // one block at a time per OS thread, one slot per warp
    return s;
}

template <typename T, typename F>
inline void load(F& frag, T const* p, unsigned ldm, bool col_major)
{
    for (int i = 0; i < kPerLane; ++i)
    {
        int const t = tile_index(i);
        frag.x[i] = at(p, t / kTile, t % kTile, ldm, col_major);
    }
    __syncwarp();
}

} // namespace detail

template <typename Use, typename T, typename L>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, L>& frag, T v)
{
    for (int i = 0; i < kPerLane; ++i)
    {
        frag.x[i] = v;
    }
}

template <typename L>
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, __half, L>& frag, __half const* p, unsigned ldm)
{
    detail::load(frag, p, ldm, std::is_same<L, col_major>::value);
}

template <typename L>
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, __half, L>& frag, __half const* p, unsigned ldm)
{
    detail::load(frag, p, ldm, std::is_same<L, col_major>::value);
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& frag, float const* p, unsigned ldm, layout_t l)
{
    detail::load(frag, p, ldm, l == mem_col_major);
}

inline void store_matrix_sync(float* p, fragment<accumulator, 16, 16, 16, float> const& frag, unsigned ldm, layout_t l)
{
    for (int i = 0; i < kPerLane; ++i)
    {
        int const t = detail::tile_index(i);
        int const r = t / kTile, c = t % kTile;
        (l == mem_col_major ? p[static_cast<std::size_t>(c) * ldm + r] : p[static_cast<std::size_t>(r) * ldm + c])
            = frag.x[i];
    }
    __syncwarp();
}

template <typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, fragment<matrix_a, 16, 16, 16, __half, LA> const& a,
    fragment<matrix_b, 16, 16, 16, __half, LB> const& b, fragment<accumulator, 16, 16, 16, float> const& c)
{
    detail::WarpScratch& s = detail::scratch();
    unsigned const w = ::cudacpu::tls_thread->warp;
    __syncwarp(); // every lane is done with the previous mma's scratch
    for (int i = 0; i < kPerLane; ++i)
    {
        int const t = detail::tile_index(i);
        s.a[w][t] = __half2float(a.x[i]);
        s.b[w][t] = __half2float(b.x[i]);
    }
    __syncwarp(); // the whole A and B are published
    float out[kPerLane];
    for (int i = 0; i < kPerLane; ++i)
    {
        int const t = detail::tile_index(i);
        int const r = t / kTile, col = t % kTile;
        float acc = c.x[i];
        for (int k = 0; k < kTile; ++k)
        {
            acc += s.a[w][r * kTile + k] * s.b[w][k * kTile + col];
        }
        out[i] = acc;
    }
    for (int i = 0; i < kPerLane; ++i)
    {
        d.x[i] = out[i]; // d may alias c
    }
}

} // namespace wmma
} // namespace nvcuda

#endif // CUDACPU_MMA_H
