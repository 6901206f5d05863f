// HollowAttention kernel v2: fp16 tensor cores (WMMA m16n16k16, fp32 accumulation), one block
// per (query tile, KV head, batch entry) serving every query head of the GQA group.
//
// Rows: a block computes kRows = 64 rows = G query heads x Mq queries (Mq = 64 / G, G = Hq/Hkv
// <= 64), so each staged K/V tile is read once for the whole group and a decode step (one
// query) fills G rows of one block instead of G blocks computing one row 16 times. Each warp
// owns 16 rows; a warp whose rows are all padding skips the arithmetic.
//
// Softmax in two passes over the key tiles that tile_schedule.h lists for the query tile:
// pass 1 computes S = Q K^T on tensor cores and keeps the running row max m and sum l; pass 2
// recomputes S and accumulates O += (exp(S - m) / l) V on tensor cores. The accumulators never
// need a per-row rescale, so nothing depends on WMMA's (unspecified) fragment layout: S and P
// go through shared memory, where rows are explicit. Cost: Q K^T twice (1.5x the tensor-core
// FLOPs of a one-pass kernel), in exchange for layout independence and fewer registers.
//
// Tile size for sm_87 (Orin): 64 query rows x 32 keys; static shared memory at D = 128 is
// 16 KiB (Q) + 16 KiB (K, V) + 12 KiB (S / output staging, P) = 44 KiB (< 48 KiB static limit),
// so an Orin SM (164 KiB shared, 64 K registers; ~165 registers x 128 threads per block) holds
// 3 blocks; smaller D uses less. 64-key tiles would need 60 KiB (dynamic shared memory).
// head_dim must be a multiple of 16 and <= 128 (rlens_hollow_tc_supported); other shapes use v1.
#ifndef RLENS_HOLLOW_ATTENTION_TC_CUH
#define RLENS_HOLLOW_ATTENTION_TC_CUH

#include "tile_schedule.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <mma.h>

namespace rlens
{
namespace hollow
{
namespace tc
{

namespace wmma = nvcuda::wmma;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kWarpRows = 16;
constexpr int kRows = kWarps * kWarpRows;
constexpr int kKeys = 32;
constexpr int kMaxChunks = 8; // head_dim / 16

struct Args
{
    __half const* q;
    __half const* k;
    __half const* v;
    int64_t const* visual_span;
    __half* out;
    int32_t num_heads;
    int32_t num_kv_heads;
    int32_t q_len;
    int32_t kv_len;
    int32_t head_dim;
    int32_t window;
    float scale;
    int32_t queries_per_block; // Mq = kRows / G
};

template <int DC>
struct alignas(32) Smem
{
    __half q[kRows * DC * 16];
    __half k[kKeys * DC * 16];
    __half v[kKeys * DC * 16];
    float s[kWarps][kWarpRows * kKeys]; // scores; after the last tile: output staging (16 x 16)
    __half p[kWarps][kWarpRows * kKeys];
};

//! Which query head and query a block row computes; padding rows duplicate a valid one.
struct Row
{
    int64_t head;
    int64_t query;
    bool valid;
};

__device__ __forceinline__ Row row_of(int r, int64_t kv_head, int group, int mq, int64_t q0, int64_t q1)
{
    int const g = r / mq;
    int64_t const qi = q0 + r % mq;
    Row row;
    row.valid = g < group && qi < q1;
    row.head = kv_head * group + (g < group ? g : group - 1);
    row.query = qi < q1 ? qi : q1 - 1;
    return row;
}

//! S (16 rows x kKeys) = Q K^T of this warp into sm.s[warp] (row-major, ld kKeys).
template <int DC>
__device__ void scores(Smem<DC>& sm, int warp,
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> const (&qf)[DC])
{
    for (int nj = 0; nj < kKeys / 16; ++nj)
    {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf;
        wmma::fill_fragment(sf, 0.0f);
#pragma unroll
        for (int kk = 0; kk < DC; ++kk)
        {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> kf; // K^T
            wmma::load_matrix_sync(kf, sm.k + nj * 16 * DC * 16 + kk * 16, DC * 16);
            wmma::mma_sync(sf, qf[kk], kf, sf);
        }
        wmma::store_matrix_sync(sm.s[warp] + nj * 16, sf, kKeys, wmma::mem_row_major);
    }
    __syncwarp();
}

//! Stage keys (and values) [key0, key0 + kKeys) of one KV head; zeros past kv_len.
template <int DC>
__device__ void load_tile(Smem<DC>& sm, Args const& a, int64_t kv_off, int64_t key0, bool with_v)
{
    int constexpr D = DC * 16;
    __half const zero = __float2half_rn(0.0f);
    for (int idx = threadIdx.x; idx < kKeys * D; idx += kThreads)
    {
        int64_t const j = key0 + idx / D;
        bool const inside = j < a.kv_len;
        int64_t const g = kv_off + j * D + idx % D;
        sm.k[idx] = inside ? a.k[g] : zero;
        if (with_v)
        {
            sm.v[idx] = inside ? a.v[g] : zero;
        }
    }
}

template <int DC>
__global__ void __launch_bounds__(kThreads, 3) hollow_attention_tc_kernel(Args a)
{
    int constexpr D = DC * 16;
    __shared__ Smem<DC> sm;
    int const warp = threadIdx.x / 32;
    int const lane = threadIdx.x % 32;
    int const group = a.num_heads / a.num_kv_heads;
    int const mq = a.queries_per_block;
    int64_t const kv_head = blockIdx.y;
    int64_t const batch = blockIdx.z;
    int64_t const past = a.kv_len - a.q_len;
    Span const span = absolute_span(a.visual_span[0], a.visual_span[1], past, a.q_len);
    int64_t const q0 = static_cast<int64_t>(blockIdx.x) * mq;
    int64_t const q1 = min64(q0 + mq, a.q_len);
    KeyTileRuns const runs = key_tile_runs(past + q0, past + q1, span, a.window, kKeys);
    int64_t const kv_off = (batch * a.num_kv_heads + kv_head) * a.kv_len * D;

    for (int idx = threadIdx.x; idx < kRows * D; idx += kThreads) // Q rows of the whole group
    {
        Row const row = row_of(idx / D, kv_head, group, mq, q0, q1);
        sm.q[idx] = a.q[((batch * a.num_heads + row.head) * a.q_len + row.query) * D + idx % D];
    }
    bool active = false; // warp-uniform: does this warp own a row that is stored?
    for (int r = 0; r < kWarpRows; ++r)
    {
        active = active || row_of(warp * kWarpRows + r, kv_head, group, mq, q0, q1).valid;
    }
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> qf[DC];
#pragma unroll
    for (int kk = 0; kk < DC; ++kk)
    {
        wmma::load_matrix_sync(qf[kk], sm.q + warp * kWarpRows * D + kk * 16, D);
    }

    // Softmax roles: lane owns row (lane % 16) of the warp, keys [16 (lane / 16), +16) of a tile.
    int const my_row = lane % kWarpRows;
    int const my_col0 = (lane / kWarpRows) * 16;
    int64_t const qa = past + row_of(warp * kWarpRows + my_row, kv_head, group, mq, q0, q1).query;
    float m = -INFINITY;
    float l = 0.0f;
    int64_t const tiles = num_key_tiles(runs);
    for (int64_t n = 0; n < tiles; ++n) // pass 1: row max and sum
    {
        int64_t const key0 = key_tile_at(runs, n) * kKeys;
        __syncthreads();
        load_tile<DC>(sm, a, kv_off, key0, false);
        __syncthreads();
        if (!active)
        {
            continue;
        }
        scores<DC>(sm, warp, qf);
        float s[16];
        float tmax = -INFINITY;
#pragma unroll
        for (int c = 0; c < 16; ++c)
        {
            bool const ok = allowed(qa, key0 + my_col0 + c, span, a.window);
            s[c] = ok ? sm.s[warp][my_row * kKeys + my_col0 + c] * a.scale : -INFINITY;
            tmax = fmaxf(tmax, s[c]);
        }
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 16));
        float const m_new = fmaxf(m, tmax);
        float sum = 0.0f;
#pragma unroll
        for (int c = 0; c < 16; ++c)
        {
            sum += s[c] == -INFINITY ? 0.0f : expf(s[c] - m_new);
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 16);
        if (m_new != -INFINITY)
        {
            l = l * expf(m - m_new) + sum; // expf(-inf) = 0 on the first visible tile
            m = m_new;
        }
    }

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> of[DC];
#pragma unroll
    for (int nd = 0; nd < DC; ++nd)
    {
        wmma::fill_fragment(of[nd], 0.0f);
    }
    float const inv_l = l > 0.0f ? 1.0f / l : 0.0f; // l > 0: every query sees itself
    for (int64_t n = 0; n < tiles; ++n) // pass 2: O += softmax(S) V
    {
        int64_t const key0 = key_tile_at(runs, n) * kKeys;
        __syncthreads();
        load_tile<DC>(sm, a, kv_off, key0, true);
        __syncthreads();
        if (!active)
        {
            continue;
        }
        scores<DC>(sm, warp, qf);
#pragma unroll
        for (int c = 0; c < 16; ++c)
        {
            int const col = my_col0 + c;
            bool const ok = allowed(qa, key0 + col, span, a.window);
            float const p = ok ? expf(sm.s[warp][my_row * kKeys + col] * a.scale - m) * inv_l : 0.0f;
            sm.p[warp][my_row * kKeys + col] = __float2half_rn(p);
        }
        __syncwarp();
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; ++kk)
        {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> pf;
            wmma::load_matrix_sync(pf, sm.p[warp] + kk * 16, kKeys);
#pragma unroll
            for (int nd = 0; nd < DC; ++nd)
            {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> vf;
                wmma::load_matrix_sync(vf, sm.v + kk * 16 * D + nd * 16, D);
                wmma::mma_sync(of[nd], pf, vf, of[nd]);
            }
        }
    }
    if (!active)
    {
        return;
    }
#pragma unroll
    for (int nd = 0; nd < DC; ++nd) // out, 16 columns at a time through shared memory
    {
        wmma::store_matrix_sync(sm.s[warp], of[nd], 16, wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < kWarpRows * 16; e += 32)
        {
            Row const row = row_of(warp * kWarpRows + e / 16, kv_head, group, mq, q0, q1);
            if (row.valid)
            {
                int64_t const o = ((batch * a.num_heads + row.head) * a.q_len + row.query) * D + nd * 16 + e % 16;
                a.out[o] = __float2half_rn(sm.s[warp][e]);
            }
        }
        __syncwarp();
    }
}

//! Whether v2 handles these shapes (otherwise the f16 entry point runs v1).
inline bool supported(int32_t num_heads, int32_t num_kv_heads, int32_t head_dim)
{
    return num_kv_heads >= 1 && num_heads % num_kv_heads == 0 && num_heads / num_kv_heads <= kRows
        && head_dim % 16 == 0 && head_dim >= 16 && head_dim <= kMaxChunks * 16;
}

} // namespace tc
} // namespace hollow
} // namespace rlens

#endif // RLENS_HOLLOW_ATTENTION_TC_CUH
