// Index and tile math of HollowAttention, shared by the CUDA kernel and the CPU tests.
//
// Positions are absolute: key j in [0, T), query i of the chunk sits at P + i with P = T - S.
// The visual span (start, length) is given in chunk coordinates and covers the absolute
// positions [P + start, P + start + length).
//
// Pattern (DESIGN.md §3.1): key j is visible to query qa when j <= qa (causal), except that a
// visual query may see a visual key only when qa - j < window.
//
// A query tile [qa0, qa1) visits at most two runs of key tiles (in key-tile units):
//   run A = [a_begin, a_end)  -- the text prefix before the span (or everything causal),
//   run B = [b_begin, b_end)  -- the window of the tile's visual queries up to the causal end,
// with a_end <= b_begin. Work for a tile of visual queries is O(prefix + window + tile).
#ifndef RLENS_HOLLOW_TILE_SCHEDULE_H
#define RLENS_HOLLOW_TILE_SCHEDULE_H

#include <stdint.h>

#if defined(__CUDACC__)
#define RLENS_HD __host__ __device__ __forceinline__
#else
#define RLENS_HD inline
#endif

namespace rlens
{
namespace hollow
{

//! Absolute visual positions [begin, end); begin == end when there is no visual token.
struct Span
{
    int64_t begin;
    int64_t end;
};

//! Key tiles visited by one query tile: run A then run B, both half-open, a_end <= b_begin.
struct KeyTileRuns
{
    int64_t a_begin;
    int64_t a_end;
    int64_t b_begin;
    int64_t b_end;
};

RLENS_HD int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

RLENS_HD int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

RLENS_HD int64_t ceil_div(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

//! Absolute span from the chunk-coordinate (start, length), clamped into the chunk [P, P + S).
//! Out-of-range spans cannot raise on the device; the Python side validates them before.
RLENS_HD Span absolute_span(int64_t start, int64_t length, int64_t past, int64_t q_len)
{
    int64_t const b = min64(max64(start, 0), q_len);
    int64_t const e = min64(max64(start + max64(length, 0), b), q_len);
    Span s;
    s.begin = past + b;
    s.end = past + e;
    return s;
}

RLENS_HD bool is_visual(int64_t pos, Span span)
{
    return pos >= span.begin && pos < span.end;
}

//! Whether query at absolute position qa may attend key at absolute position j.
RLENS_HD bool allowed(int64_t qa, int64_t j, Span span, int64_t window)
{
    if (j > qa || j < 0)
    {
        return false;
    }
    if (is_visual(qa, span) && is_visual(j, span))
    {
        return qa - j < window;
    }
    return true;
}

//! Key tiles (size key_tile) visited by the query tile of absolute positions [qa0, qa1).
RLENS_HD KeyTileRuns key_tile_runs(int64_t qa0, int64_t qa1, Span span, int64_t window, int64_t key_tile)
{
    KeyTileRuns r;
    int64_t const key_end = qa1; // causal: the last query sees keys up to qa1 - 1
    int64_t const first_visual = max64(qa0, span.begin);
    bool const has_visual = first_visual < min64(qa1, span.end);
    bool const has_text_after = qa1 > span.end && span.end > span.begin;
    if (!has_visual || has_text_after)
    {
        r.a_begin = 0;
        r.a_end = ceil_div(key_end, key_tile);
        r.b_begin = r.a_end;
        r.b_end = r.a_end;
        return r;
    }
    // Visual queries (and text queries before the span, whose keys all precede the span):
    // the text prefix [0, span.begin), then the window of the first visual query onwards.
    r.a_begin = 0;
    r.a_end = ceil_div(span.begin, key_tile);
    int64_t const window_begin = max64(span.begin, first_visual - window + 1);
    r.b_begin = max64(window_begin / key_tile, r.a_end);
    r.b_end = max64(ceil_div(key_end, key_tile), r.b_begin);
    return r;
}

RLENS_HD int64_t num_key_tiles(KeyTileRuns r)
{
    return (r.a_end - r.a_begin) + (r.b_end - r.b_begin);
}

//! The n-th visited key tile, 0 <= n < num_key_tiles(r).
RLENS_HD int64_t key_tile_at(KeyTileRuns r, int64_t n)
{
    int64_t const na = r.a_end - r.a_begin;
    return n < na ? r.a_begin + n : r.b_begin + (n - na);
}

} // namespace hollow
} // namespace rlens

#endif // RLENS_HOLLOW_TILE_SCHEDULE_H
