// HollowAttention CUDA kernels and their C entry points.
//
// v2 (hollow_attention_tc.cuh): fp16 tensor cores, K/V tiles shared by a GQA group, used by
// rlens_hollow_attention_f16 whenever rlens_hollow_tc_supported() holds (head_dim % 16 == 0,
// head_dim <= 128, Hq / Hkv <= 64). v1 (below): the CUDA-core kernel, used for fp32, for the
// other fp16 shapes, and on request (rlens_hollow_attention_f16_simt, for tests and benchmarks).
//
// v1: flash-attention style tiling with an online softmax.
//
// One block per (query tile of kQueryTile queries, query head, batch entry). The block visits
// only the key tiles that tile_schedule.h says its queries need (text prefix + window for
// visual queries, everything causal for text queries), staging each key/value tile in shared
// memory as float. Each warp owns kQueriesPerWarp queries; a lane holds head_dim / 32 elements
// of each query and of its float accumulator. Work is proportional to the attended pairs, at
// tile granularity. Layouts and the C entry points are documented in hollow_attention_kernel.h.
#include "hollow_attention_kernel.h"
#include "hollow_attention_tc.cuh"
#include "tile_schedule.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

namespace rlens
{
namespace hollow
{
namespace
{

constexpr int kWarpSize = 32;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kQueriesPerWarp = 4;
constexpr int kQueryTile = kWarps * kQueriesPerWarp;
constexpr int kKeyTile = 16;

template <typename T>
struct KernelArgs
{
    T const* q;
    T const* k;
    T const* v;
    int64_t const* visual_span;
    T* out;
    int32_t num_heads;
    int32_t num_kv_heads;
    int32_t q_len;
    int32_t kv_len;
    int32_t head_dim;
    int32_t window;
    float scale;
};

__device__ __forceinline__ float to_float(float x)
{
    return x;
}

__device__ __forceinline__ float to_float(__half x)
{
    return __half2float(x);
}

template <typename T>
__device__ __forceinline__ T from_float(float x);

template <>
__device__ __forceinline__ float from_float<float>(float x)
{
    return x;
}

template <>
__device__ __forceinline__ __half from_float<__half>(float x)
{
    return __float2half_rn(x);
}

__device__ __forceinline__ float warp_sum(float x)
{
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    {
        x += __shfl_xor_sync(0xffffffffu, x, offset);
    }
    return x;
}

//! Stage keys [key0, key0 + kKeyTile) of one kv head into shared memory; zeros past kv_len.
template <typename T>
__device__ void load_key_tile(float* sK, float* sV, T const* k, T const* v, int64_t key0, int64_t kv_len, int hd)
{
    int64_t const base = key0 * hd;
    int64_t const limit = kv_len * hd;
    for (int idx = threadIdx.x; idx < kKeyTile * hd; idx += kThreads)
    {
        bool const inside = base + idx < limit;
        sK[idx] = inside ? to_float(k[base + idx]) : 0.0f;
        sV[idx] = inside ? to_float(v[base + idx]) : 0.0f;
    }
}

//! Per-query running state of the online softmax (one warp, one query).
template <int DPL>
struct QueryState
{
    float q[DPL];
    float acc[DPL];
    float m;
    float l;
};

//! Online-softmax update of one query with one staged key tile.
template <int DPL>
__device__ void attend_tile(QueryState<DPL>& st, float const* sK, float const* sV, int64_t key0, int64_t qa,
    Span span, int64_t window, int hd, float scale)
{
    int const lane = threadIdx.x % kWarpSize;
    float s[kKeyTile];
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < kKeyTile; ++j)
    {
        float part = 0.0f;
#pragma unroll
        for (int e = 0; e < DPL; ++e)
        {
            int const d = lane + kWarpSize * e;
            part += d < hd ? st.q[e] * sK[j * hd + d] : 0.0f;
        }
        float const dot = warp_sum(part);
        s[j] = allowed(qa, key0 + j, span, window) ? dot * scale : -INFINITY;
        tile_max = fmaxf(tile_max, s[j]);
    }
    if (tile_max == -INFINITY)
    {
        return;
    }
    float const m_new = fmaxf(st.m, tile_max);
    float const corr = expf(st.m - m_new); // 0 on the first visited tile (m = -inf)
    st.l *= corr;
#pragma unroll
    for (int e = 0; e < DPL; ++e)
    {
        st.acc[e] *= corr;
    }
#pragma unroll
    for (int j = 0; j < kKeyTile; ++j)
    {
        float const p = s[j] == -INFINITY ? 0.0f : expf(s[j] - m_new);
        st.l += p;
#pragma unroll
        for (int e = 0; e < DPL; ++e)
        {
            int const d = lane + kWarpSize * e;
            st.acc[e] += d < hd ? p * sV[j * hd + d] : 0.0f;
        }
    }
    st.m = m_new;
}

template <typename T, int DPL>
__device__ void load_query(QueryState<DPL>& st, T const* q_row, int hd)
{
    int const lane = threadIdx.x % kWarpSize;
#pragma unroll
    for (int e = 0; e < DPL; ++e)
    {
        int const d = lane + kWarpSize * e;
        st.q[e] = d < hd ? to_float(q_row[d]) : 0.0f;
        st.acc[e] = 0.0f;
    }
    st.m = -INFINITY;
    st.l = 0.0f;
}

template <typename T, int DPL>
__device__ void store_query(QueryState<DPL> const& st, T* out_row, int hd)
{
    int const lane = threadIdx.x % kWarpSize;
    float const inv = st.l > 0.0f ? 1.0f / st.l : 0.0f; // l > 0: every query sees itself
#pragma unroll
    for (int e = 0; e < DPL; ++e)
    {
        int const d = lane + kWarpSize * e;
        if (d < hd)
        {
            out_row[d] = from_float<T>(st.acc[e] * inv);
        }
    }
}

template <typename T, int DPL>
__global__ void __launch_bounds__(kThreads) hollow_attention_kernel(KernelArgs<T> a)
{
    __shared__ float sK[kKeyTile * RLENS_HOLLOW_MAX_HEAD_DIM];
    __shared__ float sV[kKeyTile * RLENS_HOLLOW_MAX_HEAD_DIM];
    int const hd = a.head_dim;
    int64_t const head = blockIdx.y;
    int64_t const kv_head = head / (a.num_heads / a.num_kv_heads);
    int64_t const past = a.kv_len - a.q_len;
    Span const span = absolute_span(a.visual_span[0], a.visual_span[1], past, a.q_len);
    int64_t const q0 = static_cast<int64_t>(blockIdx.x) * kQueryTile;
    int64_t const q1 = min64(q0 + kQueryTile, a.q_len);
    KeyTileRuns const runs = key_tile_runs(past + q0, past + q1, span, a.window, kKeyTile);

    int64_t const q_head = (static_cast<int64_t>(blockIdx.z) * a.num_heads + head) * a.q_len;
    int64_t const kv_off = (static_cast<int64_t>(blockIdx.z) * a.num_kv_heads + kv_head) * a.kv_len * hd;
    int64_t const first = q0 + (threadIdx.x / kWarpSize) * kQueriesPerWarp;
    QueryState<DPL> st[kQueriesPerWarp];
#pragma unroll
    for (int r = 0; r < kQueriesPerWarp; ++r)
    {
        int64_t const qi = min64(first + r, q1 - 1); // rows past q1 compute a duplicate, never stored
        load_query<T, DPL>(st[r], a.q + (q_head + qi) * hd, hd);
    }
    for (int64_t n = 0; n < num_key_tiles(runs); ++n)
    {
        int64_t const key0 = key_tile_at(runs, n) * kKeyTile;
        __syncthreads();
        load_key_tile<T>(sK, sV, a.k + kv_off, a.v + kv_off, key0, a.kv_len, hd);
        __syncthreads();
#pragma unroll
        for (int r = 0; r < kQueriesPerWarp; ++r)
        {
            int64_t const qi = min64(first + r, q1 - 1);
            attend_tile<DPL>(st[r], sK, sV, key0, past + qi, span, a.window, hd, a.scale);
        }
    }
#pragma unroll
    for (int r = 0; r < kQueriesPerWarp; ++r)
    {
        if (first + r < q1)
        {
            store_query<T, DPL>(st[r], a.out + (q_head + first + r) * hd, hd);
        }
    }
}

template <typename T, int DPL>
cudaError_t launch_dpl(KernelArgs<T> const& a, int32_t batch, cudaStream_t stream)
{
    dim3 const grid(static_cast<unsigned>((a.q_len + kQueryTile - 1) / kQueryTile),
        static_cast<unsigned>(a.num_heads), static_cast<unsigned>(batch));
    hollow_attention_kernel<T, DPL><<<grid, kThreads, 0, stream>>>(a);
    return cudaGetLastError();
}

template <typename T>
bool bad_args(KernelArgs<T> const& a, int32_t batch)
{
    return a.head_dim < 1 || a.head_dim > RLENS_HOLLOW_MAX_HEAD_DIM || a.num_heads < 1 || a.num_kv_heads < 1
        || a.num_heads % a.num_kv_heads != 0 || a.q_len < 0 || a.kv_len < a.q_len || a.window < 1 || batch < 0
        || a.num_heads > 65535 || batch > 65535;
}

template <typename T>
cudaError_t launch(KernelArgs<T> const& a, int32_t batch, cudaStream_t stream)
{
    if (bad_args(a, batch))
    {
        return cudaErrorInvalidValue;
    }
    if (a.q_len == 0 || batch == 0)
    {
        return cudaSuccess;
    }
    if (a.head_dim <= 32)
    {
        return launch_dpl<T, 1>(a, batch, stream);
    }
    if (a.head_dim <= 64)
    {
        return launch_dpl<T, 2>(a, batch, stream);
    }
    if (a.head_dim <= 128)
    {
        return launch_dpl<T, 4>(a, batch, stream);
    }
    return launch_dpl<T, 8>(a, batch, stream);
}

template <int DC>
cudaError_t launch_tc_dc(tc::Args const& t, int32_t batch, cudaStream_t stream)
{
    dim3 const grid(static_cast<unsigned>((t.q_len + t.queries_per_block - 1) / t.queries_per_block),
        static_cast<unsigned>(t.num_kv_heads), static_cast<unsigned>(batch));
    tc::hollow_attention_tc_kernel<DC><<<grid, tc::kThreads, 0, stream>>>(t);
    return cudaGetLastError();
}

cudaError_t launch_tc(KernelArgs<__half> const& a, int32_t batch, cudaStream_t stream)
{
    if (bad_args(a, batch) || !tc::supported(a.num_heads, a.num_kv_heads, a.head_dim))
    {
        return cudaErrorInvalidValue;
    }
    if (a.q_len == 0 || batch == 0)
    {
        return cudaSuccess;
    }
    tc::Args const t{a.q, a.k, a.v, a.visual_span, a.out, a.num_heads, a.num_kv_heads, a.q_len, a.kv_len,
        a.head_dim, a.window, a.scale, tc::kRows / (a.num_heads / a.num_kv_heads)};
    switch (a.head_dim / 16)
    {
    case 1: return launch_tc_dc<1>(t, batch, stream);
    case 2: return launch_tc_dc<2>(t, batch, stream);
    case 3: return launch_tc_dc<3>(t, batch, stream);
    case 4: return launch_tc_dc<4>(t, batch, stream);
    case 5: return launch_tc_dc<5>(t, batch, stream);
    case 6: return launch_tc_dc<6>(t, batch, stream);
    case 7: return launch_tc_dc<7>(t, batch, stream);
    default: return launch_tc_dc<8>(t, batch, stream);
    }
}

template <typename T>
KernelArgs<T> make_args(void const* q, void const* k, void const* v, int64_t const* span, void* out, int32_t heads,
    int32_t kv_heads, int32_t q_len, int32_t kv_len, int32_t hd, int32_t window, float scale)
{
    KernelArgs<T> a;
    a.q = static_cast<T const*>(q);
    a.k = static_cast<T const*>(k);
    a.v = static_cast<T const*>(v);
    a.visual_span = span;
    a.out = static_cast<T*>(out);
    a.num_heads = heads;
    a.num_kv_heads = kv_heads;
    a.q_len = q_len;
    a.kv_len = kv_len;
    a.head_dim = hd;
    a.window = window;
    a.scale = scale;
    return a;
}

} // namespace
} // namespace hollow
} // namespace rlens

extern "C" int rlens_hollow_attention_f32(float const* q, float const* k, float const* v, int64_t const* visual_span,
    float* out, int32_t batch, int32_t num_heads, int32_t num_kv_heads, int32_t q_len, int32_t kv_len,
    int32_t head_dim, int32_t window, float scale, rlens_stream_t stream)
{
    using namespace rlens::hollow;
    KernelArgs<float> const a = make_args<float>(
        q, k, v, visual_span, out, num_heads, num_kv_heads, q_len, kv_len, head_dim, window, scale);
    return static_cast<int>(launch<float>(a, batch, reinterpret_cast<cudaStream_t>(stream)));
}

extern "C" int rlens_hollow_attention_f16(void const* q, void const* k, void const* v, int64_t const* visual_span,
    void* out, int32_t batch, int32_t num_heads, int32_t num_kv_heads, int32_t q_len, int32_t kv_len,
    int32_t head_dim, int32_t window, float scale, rlens_stream_t stream)
{
    if (rlens_hollow_tc_supported(num_heads, num_kv_heads, head_dim))
    {
        return rlens_hollow_attention_f16_tc(q, k, v, visual_span, out, batch, num_heads, num_kv_heads, q_len, kv_len,
            head_dim, window, scale, stream);
    }
    return rlens_hollow_attention_f16_simt(q, k, v, visual_span, out, batch, num_heads, num_kv_heads, q_len, kv_len,
        head_dim, window, scale, stream);
}

extern "C" int rlens_hollow_attention_f16_simt(void const* q, void const* k, void const* v,
    int64_t const* visual_span, void* out, int32_t batch, int32_t num_heads, int32_t num_kv_heads, int32_t q_len,
    int32_t kv_len, int32_t head_dim, int32_t window, float scale, rlens_stream_t stream)
{
    using namespace rlens::hollow;
    KernelArgs<__half> const a = make_args<__half>(
        q, k, v, visual_span, out, num_heads, num_kv_heads, q_len, kv_len, head_dim, window, scale);
    return static_cast<int>(launch<__half>(a, batch, reinterpret_cast<cudaStream_t>(stream)));
}

extern "C" int rlens_hollow_attention_f16_tc(void const* q, void const* k, void const* v, int64_t const* visual_span,
    void* out, int32_t batch, int32_t num_heads, int32_t num_kv_heads, int32_t q_len, int32_t kv_len,
    int32_t head_dim, int32_t window, float scale, rlens_stream_t stream)
{
    using namespace rlens::hollow;
    KernelArgs<__half> const a = make_args<__half>(
        q, k, v, visual_span, out, num_heads, num_kv_heads, q_len, kv_len, head_dim, window, scale);
    return static_cast<int>(launch_tc(a, batch, reinterpret_cast<cudaStream_t>(stream)));
}

extern "C" int rlens_hollow_tc_supported(int32_t num_heads, int32_t num_kv_heads, int32_t head_dim)
{
    return rlens::hollow::tc::supported(num_heads, num_kv_heads, head_dim) ? 1 : 0;
}
