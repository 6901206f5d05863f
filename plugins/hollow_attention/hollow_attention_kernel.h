/* C entry points of the HollowAttention CUDA kernel (no TensorRT needed).
 *
 * Layouts (contiguous, row-major, device memory):
 *   q    [batch, num_heads,    q_len,  head_dim]   query i sits at absolute position P + i
 *   k, v [batch, num_kv_heads, kv_len, head_dim]   past included, P = kv_len - q_len
 *   out  [batch, num_heads,    q_len,  head_dim]
 *   visual_span int64[2] = (start, length) in chunk coordinates (device memory), shared by
 *   the batch; clamped into [0, q_len).
 * q/k/v/out are float32 (_f32) or IEEE half (_f16, passed as void*); accumulation is float32.
 * Query head h reads key/value head h / (num_heads / num_kv_heads) (GQA).
 *
 * Returns 0 (cudaSuccess) or a cudaError_t code: cudaErrorInvalidValue for bad arguments
 * (head_dim outside [1, RLENS_HOLLOW_MAX_HEAD_DIM], num_heads not a multiple of num_kv_heads,
 * kv_len < q_len, window < 1), otherwise the launch error. The launch is asynchronous on stream.
 */
#ifndef RLENS_HOLLOW_ATTENTION_KERNEL_H
#define RLENS_HOLLOW_ATTENTION_KERNEL_H

#include <stdint.h>

#define RLENS_HOLLOW_MAX_HEAD_DIM 256

#ifdef __cplusplus
extern "C" {
#endif

typedef struct CUstream_st* rlens_stream_t; /* same type as cudaStream_t */

int rlens_hollow_attention_f32(float const* q, float const* k, float const* v, int64_t const* visual_span,
    float* out, int32_t batch, int32_t num_heads, int32_t num_kv_heads, int32_t q_len, int32_t kv_len,
    int32_t head_dim, int32_t window, float scale, rlens_stream_t stream);

int rlens_hollow_attention_f16(void const* q, void const* k, void const* v, int64_t const* visual_span,
    void* out, int32_t batch, int32_t num_heads, int32_t num_kv_heads, int32_t q_len, int32_t kv_len,
    int32_t head_dim, int32_t window, float scale, rlens_stream_t stream);

/* fp16 variants: _f16 picks v2 (tensor cores) when rlens_hollow_tc_supported(), else v1;
 * _f16_simt always runs v1 (CUDA cores); _f16_tc always runs v2 (cudaErrorInvalidValue for
 * shapes it does not support). Same arguments and results as _f16. */
int rlens_hollow_attention_f16_simt(void const* q, void const* k, void const* v, int64_t const* visual_span,
    void* out, int32_t batch, int32_t num_heads, int32_t num_kv_heads, int32_t q_len, int32_t kv_len,
    int32_t head_dim, int32_t window, float scale, rlens_stream_t stream);

int rlens_hollow_attention_f16_tc(void const* q, void const* k, void const* v, int64_t const* visual_span,
    void* out, int32_t batch, int32_t num_heads, int32_t num_kv_heads, int32_t q_len, int32_t kv_len,
    int32_t head_dim, int32_t window, float scale, rlens_stream_t stream);

/* 1 when v2 handles the shape: head_dim a multiple of 16 up to 128, num_heads / num_kv_heads <= 64. */
int rlens_hollow_tc_supported(int32_t num_heads, int32_t num_kv_heads, int32_t head_dim);

#ifdef __cplusplus
}
#endif

#endif /* RLENS_HOLLOW_ATTENTION_KERNEL_H */
