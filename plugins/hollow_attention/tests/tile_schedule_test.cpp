// CPU driver of tile_schedule.h (plain C++, no CUDA): reads a problem on stdin, prints the key
// tiles each query tile visits and the attention output computed with the same tile walk and
// the same `allowed` predicate as the CUDA kernel. tests/test_plugin_tile_math.py compares it
// with the Python reference (rlens.plugins.spec).
//
// stdin : B Hq Hkv S T D start length window scale query_tile key_tile, then q, k, v values
//         (row-major [B,Hq,S,D], [B,Hkv,T,D], [B,Hkv,T,D]).
// stdout: "tiles <query tile> <count> <key tile>..." per query tile,
//         "pairs <visited (query, key) pairs of one head>", "allowed <allowed pairs of one head>",
//         "out <B*Hq*S*D values>".
#include "../tile_schedule.h"

#include <cmath>
#include <cstdio>
#include <iostream>
#include <vector>

using namespace rlens::hollow;

namespace
{

struct Problem
{
    int64_t batch, heads, kv_heads, q_len, kv_len, head_dim, start, length, window;
    double scale;
    int64_t query_tile, key_tile;
    std::vector<double> q, k, v;
};

bool read_values(std::vector<double>& dst, size_t count)
{
    dst.resize(count);
    for (double& x : dst)
    {
        if (!(std::cin >> x))
        {
            return false;
        }
    }
    return true;
}

bool read_problem(Problem& p)
{
    std::cin >> p.batch >> p.heads >> p.kv_heads >> p.q_len >> p.kv_len >> p.head_dim >> p.start >> p.length
        >> p.window >> p.scale >> p.query_tile >> p.key_tile;
    if (!std::cin || p.kv_len < p.q_len || p.heads % p.kv_heads != 0 || p.query_tile < 1 || p.key_tile < 1)
    {
        return false;
    }
    size_t const nq = static_cast<size_t>(p.batch * p.heads * p.q_len * p.head_dim);
    size_t const nk = static_cast<size_t>(p.batch * p.kv_heads * p.kv_len * p.head_dim);
    return read_values(p.q, nq) && read_values(p.k, nk) && read_values(p.v, nk);
}

Span span_of(Problem const& p)
{
    return absolute_span(p.start, p.length, p.kv_len - p.q_len, p.q_len);
}

KeyTileRuns runs_of(Problem const& p, int64_t tile)
{
    int64_t const past = p.kv_len - p.q_len;
    int64_t const q0 = tile * p.query_tile;
    int64_t const q1 = q0 + p.query_tile < p.q_len ? q0 + p.query_tile : p.q_len;
    return key_tile_runs(past + q0, past + q1, span_of(p), p.window, p.key_tile);
}

void print_schedule(Problem const& p)
{
    int64_t const tiles = (p.q_len + p.query_tile - 1) / p.query_tile;
    int64_t pairs = 0;
    int64_t allowed_pairs = 0;
    int64_t const past = p.kv_len - p.q_len;
    for (int64_t t = 0; t < tiles; ++t)
    {
        KeyTileRuns const r = runs_of(p, t);
        int64_t const n = num_key_tiles(r);
        int64_t const rows = (t + 1) * p.query_tile < p.q_len ? p.query_tile : p.q_len - t * p.query_tile;
        std::printf("tiles %lld %lld", static_cast<long long>(t), static_cast<long long>(n));
        for (int64_t i = 0; i < n; ++i)
        {
            int64_t const kt = key_tile_at(r, i);
            std::printf(" %lld", static_cast<long long>(kt));
            for (int64_t qi = t * p.query_tile; qi < t * p.query_tile + rows; ++qi)
            {
                for (int64_t j = kt * p.key_tile; j < (kt + 1) * p.key_tile && j < p.kv_len; ++j)
                {
                    allowed_pairs += allowed(past + qi, j, span_of(p), p.window) ? 1 : 0;
                }
            }
        }
        std::printf("\n");
        pairs += rows * n * p.key_tile;
    }
    std::printf("pairs %lld\nallowed %lld\n", static_cast<long long>(pairs), static_cast<long long>(allowed_pairs));
}

//! One query row with an online softmax over the visited key tiles (as the kernel does).
void attend_row(Problem const& p, KeyTileRuns const& r, int64_t qa, double const* q, double const* k,
    double const* v, double* out)
{
    int64_t const d = p.head_dim;
    double m = -INFINITY;
    double l = 0.0;
    std::vector<double> acc(static_cast<size_t>(d), 0.0);
    for (int64_t n = 0; n < num_key_tiles(r); ++n)
    {
        int64_t const key0 = key_tile_at(r, n) * p.key_tile;
        for (int64_t j = key0; j < key0 + p.key_tile && j < p.kv_len; ++j)
        {
            if (!allowed(qa, j, span_of(p), p.window))
            {
                continue;
            }
            double s = 0.0;
            for (int64_t e = 0; e < d; ++e)
            {
                s += q[e] * k[j * d + e];
            }
            s *= p.scale;
            double const m_new = s > m ? s : m;
            double const corr = std::exp(m - m_new);
            double const w = std::exp(s - m_new);
            l = l * corr + w;
            for (int64_t e = 0; e < d; ++e)
            {
                acc[e] = acc[e] * corr + w * v[j * d + e];
            }
            m = m_new;
        }
    }
    for (int64_t e = 0; e < d; ++e)
    {
        out[e] = acc[e] / l;
    }
}

void print_attention(Problem const& p)
{
    int64_t const d = p.head_dim;
    int64_t const past = p.kv_len - p.q_len;
    int64_t const group = p.heads / p.kv_heads;
    std::vector<double> out(p.q.size(), 0.0);
    for (int64_t b = 0; b < p.batch; ++b)
    {
        for (int64_t h = 0; h < p.heads; ++h)
        {
            int64_t const qoff = (b * p.heads + h) * p.q_len * d;
            int64_t const kvoff = (b * p.kv_heads + h / group) * p.kv_len * d;
            for (int64_t qi = 0; qi < p.q_len; ++qi)
            {
                KeyTileRuns const r = runs_of(p, qi / p.query_tile);
                attend_row(p, r, past + qi, &p.q[qoff + qi * d], &p.k[kvoff], &p.v[kvoff], &out[qoff + qi * d]);
            }
        }
    }
    std::printf("out");
    for (double x : out)
    {
        std::printf(" %.17g", x);
    }
    std::printf("\n");
}

} // namespace

int main()
{
    Problem p;
    if (!read_problem(p))
    {
        std::fprintf(stderr, "tile_schedule_test: malformed input\n");
        return 2;
    }
    print_schedule(p);
    print_attention(p);
    return 0;
}
