// Numerics harness for the rlens HollowAttention CUDA kernel compiled for the CPU.
//
// Calls the project's own C entry points rlens_hollow_attention_f32 / _f16 (host launch code and
// __global__ kernel from plugins/hollow_attention/hollow_attention_kernel.cu, built by a CPU
// backend) on seeded random inputs and compares the output with a brute-force float64
// reference that applies the explicit mask of DESIGN.md section 3.1:
//   key j visible to query at absolute position qa  <=>  j <= qa, and, when both are inside the
//   visual span, qa - j < W.
// The reference is written from the spec alone (it does not use tile_schedule.h).
//
// Usage: harness                      all built-in cases, fp32 and fp16
//        harness --case B H Hkv S P D start len W [f32|f16|both]   one custom case
//        harness --random N [SEED]    N random small cases (fp32 / fp16 alternating), seed 7
//        harness --sweep              tile-boundary sweep: W in 1..17,31..33 x past 0..15 x span
//                                     start 0/6 to the chunk end (q_len 40, d32, fp32)
//        harness --full [N [SEED]]    built-in cases + sweep + N random cases (300) + argument checks
//        any mode may be preceded by --variant auto|simt|tc: which fp16 kernel the f16 cases call
//        (auto: rlens_hollow_attention_f16, which picks v2 where supported; simt: v1 only;
//        tc: v2 only, cases outside its shapes are counted as skipped)
// Prints one line per case with the max abs error, then "N passed, N failed, N skipped" and
// "max_abs f32 X f16 Y".
#include "hollow_attention_kernel.h"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

extern "C" int cudacpu_sync(); // provided by the backend (wait for the launched kernel)

namespace
{

using F16Fn = int (*)(void const*, void const*, void const*, int64_t const*, void*, int32_t, int32_t, int32_t,
    int32_t, int32_t, int32_t, int32_t, float, rlens_stream_t);
F16Fn g_f16 = rlens_hollow_attention_f16;
bool g_tc_only = false;

struct Case
{
    char const* name;
    int batch, heads, kv_heads, q_len, past, dim;
    int64_t start, length;
    int window;
    int dtypes; // 0: fp32 and fp16, 1: fp32 only, 2: fp16 only
};

// ---- IEEE binary16 <-> float, round to nearest even (independent of the backend's __half) ----
uint16_t float_to_half(float f)
{
    uint32_t x;
    std::memcpy(&x, &f, 4);
    uint32_t const sign = (x >> 16) & 0x8000u;
    uint32_t const absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) // inf / nan
    {
        return static_cast<uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
    }
    if (absx >= 0x477ff000u) // rounds to >= 65520: overflow to inf
    {
        return static_cast<uint16_t>(sign | 0x7c00u);
    }
    if (absx < 0x38800000u) // below the smallest normal half: subnormal or zero
    {
        float const a = std::fabs(f) * 16777216.0f; // 2^24: units of the smallest subnormal
        float const r = std::nearbyint(a);          // default rounding mode: nearest even
        return static_cast<uint16_t>(sign | static_cast<uint32_t>(r));
    }
    uint32_t const mant = absx & 0x7fffffu;
    uint32_t const exp = (absx >> 23) - 127 + 15;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t const rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
    {
        ++h; // may carry into the exponent: still correct
    }
    return static_cast<uint16_t>(sign | h);
}

float half_to_float(uint16_t h)
{
    uint32_t const sign = (h & 0x8000u) << 16;
    uint32_t const exp = (h >> 10) & 0x1fu;
    uint32_t const mant = h & 0x3ffu;
    float f;
    if (exp == 0)
    {
        f = std::ldexp(static_cast<float>(mant), -24);
        return sign ? -f : f;
    }
    uint32_t x;
    if (exp == 31)
    {
        x = sign | 0x7f800000u | (mant << 13);
    }
    else
    {
        x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    }
    std::memcpy(&f, &x, 4);
    return f;
}

// ---- brute-force reference ----------------------------------------------------------------
bool visible(int64_t qa, int64_t j, int64_t vis_begin, int64_t vis_end, int64_t window)
{
    if (j > qa)
    {
        return false;
    }
    bool const q_vis = qa >= vis_begin && qa < vis_end;
    bool const k_vis = j >= vis_begin && j < vis_end;
    return !(q_vis && k_vis && qa - j >= window);
}

std::vector<double> reference(Case const& c, std::vector<float> const& q, std::vector<float> const& k,
    std::vector<float> const& v, double scale)
{
    int64_t const S = c.q_len, T = c.past + c.q_len, D = c.dim, P = c.past;
    // span clamped into the chunk [0, S) as documented in hollow_attention_kernel.h
    int64_t const b = std::min<int64_t>(std::max<int64_t>(c.start, 0), S);
    int64_t const e = std::min<int64_t>(std::max<int64_t>(c.start + std::max<int64_t>(c.length, 0), b), S);
    int64_t const vb = P + b, ve = P + e;
    int const group = c.heads / c.kv_heads;
    std::vector<double> out(static_cast<size_t>(c.batch) * c.heads * S * D, 0.0);
    std::vector<double> s(T);
    for (int bi = 0; bi < c.batch; ++bi)
    {
        for (int h = 0; h < c.heads; ++h)
        {
            int const kh = h / group;
            float const* qh = &q[((static_cast<size_t>(bi) * c.heads + h) * S) * D];
            float const* kk = &k[((static_cast<size_t>(bi) * c.kv_heads + kh) * T) * D];
            float const* vv = &v[((static_cast<size_t>(bi) * c.kv_heads + kh) * T) * D];
            double* oh = &out[((static_cast<size_t>(bi) * c.heads + h) * S) * D];
            for (int64_t i = 0; i < S; ++i)
            {
                int64_t const qa = P + i;
                double m = -INFINITY;
                for (int64_t j = 0; j < T; ++j)
                {
                    if (!visible(qa, j, vb, ve, c.window))
                    {
                        s[j] = -INFINITY;
                        continue;
                    }
                    double dot = 0.0;
                    for (int64_t d = 0; d < D; ++d)
                    {
                        dot += static_cast<double>(qh[i * D + d]) * kk[j * D + d];
                    }
                    s[j] = dot * scale;
                    m = std::max(m, s[j]);
                }
                double l = 0.0;
                for (int64_t j = 0; j < T; ++j)
                {
                    if (s[j] == -INFINITY)
                    {
                        continue;
                    }
                    double const p = std::exp(s[j] - m);
                    l += p;
                    for (int64_t d = 0; d < D; ++d)
                    {
                        oh[i * D + d] += p * vv[j * D + d];
                    }
                }
                for (int64_t d = 0; d < D; ++d)
                {
                    oh[i * D + d] /= l;
                }
            }
        }
    }
    return out;
}

struct Result
{
    int rc;
    double max_abs;
    double worst_excess; // max of |a - b| - (atol + rtol |b|); > 0 means a failure
    long nonfinite;
    double seconds;
};

Result run_case(Case const& c, bool fp16, uint64_t seed)
{
    int64_t const S = c.q_len, T = c.past + c.q_len, D = c.dim;
    size_t const nq = static_cast<size_t>(c.batch) * c.heads * S * D;
    size_t const nk = static_cast<size_t>(c.batch) * c.kv_heads * T * D;
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> q(nq), k(nk), v(nk);
    for (auto* t : {&q, &k, &v})
    {
        for (float& x : *t)
        {
            x = normal(rng);
            if (fp16)
            {
                x = half_to_float(float_to_half(x)); // the reference sees exactly the fp16 inputs
            }
        }
    }
    float const scale = 1.0f / std::sqrt(static_cast<float>(D));
    int64_t const span[2] = {c.start, c.length};
    Result r{};
    auto const t0 = std::chrono::steady_clock::now();
    std::vector<double> got(nq);
    if (!fp16)
    {
        std::vector<float> out(nq, std::nanf("")); // poison: rows never written stay NaN
        r.rc = rlens_hollow_attention_f32(q.data(), k.data(), v.data(), span, out.data(), c.batch, c.heads,
            c.kv_heads, c.q_len, static_cast<int32_t>(T), c.dim, c.window, scale, nullptr);
        int const s = cudacpu_sync();
        r.rc = r.rc ? r.rc : s;
        for (size_t i = 0; i < nq; ++i)
        {
            got[i] = out[i];
        }
    }
    else
    {
        std::vector<uint16_t> hq(nq), hk(nk), hv(nk), out(nq, 0x7e00u); // poison: fp16 NaN
        for (size_t i = 0; i < nq; ++i)
        {
            hq[i] = float_to_half(q[i]);
        }
        for (size_t i = 0; i < nk; ++i)
        {
            hk[i] = float_to_half(k[i]);
            hv[i] = float_to_half(v[i]);
        }
        r.rc = g_f16(hq.data(), hk.data(), hv.data(), span, out.data(), c.batch, c.heads,
            c.kv_heads, c.q_len, static_cast<int32_t>(T), c.dim, c.window, scale, nullptr);
        int const s = cudacpu_sync();
        r.rc = r.rc ? r.rc : s;
        for (size_t i = 0; i < nq; ++i)
        {
            got[i] = half_to_float(out[i]);
        }
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::vector<double> const want = reference(c, q, k, v, scale);
    double const tol = fp16 ? 1e-2 : 1e-4; // atol = rtol = tol, as tests/test_plugin_build.py's GPU test
    r.worst_excess = -INFINITY;
    for (size_t i = 0; i < nq; ++i)
    {
        if (!std::isfinite(got[i]))
        {
            ++r.nonfinite;
            continue;
        }
        double const err = std::fabs(got[i] - want[i]);
        r.max_abs = std::max(r.max_abs, err);
        r.worst_excess = std::max(r.worst_excess, err - (tol + tol * std::fabs(want[i])));
    }
    return r;
}

// batch, heads, kv_heads, q_len, past, head_dim, span start, span length, window
std::vector<Case> const kCases = {
    {"gpu0: span mid, GQA2, B2", 2, 4, 2, 70, 0, 64, 10, 40, 8, 0},
    {"gpu1: long span, past, GQA4", 1, 8, 2, 300, 37, 128, 5, 256, 64, 0},
    {"gpu2: span=chunk, W=1, d96", 1, 2, 1, 33, 12, 96, 0, 33, 1, 0},
    {"gpu3: empty span, d32", 1, 4, 4, 50, 0, 32, 0, 0, 16, 0},
    {"gpu4: span at end, W>len, d256", 1, 2, 2, 40, 3, 256, 30, 10, 100, 0},
    {"span at start, no past", 2, 4, 4, 48, 0, 64, 0, 30, 5, 0},
    {"span at start, past 20, GQA4", 1, 4, 1, 48, 20, 128, 0, 30, 5, 0},
    {"span ends at chunk end, B2", 2, 2, 2, 37, 0, 64, 17, 20, 3, 0},
    {"W=1 long span (diag only)", 1, 2, 1, 64, 0, 64, 8, 50, 1, 0},
    {"W=len (== causal)", 1, 2, 2, 40, 0, 128, 5, 30, 30, 0},
    {"W=17 odd tiles, GQA3, past 7", 1, 3, 1, 83, 7, 128, 13, 61, 21, 0},
    {"W=16 tile-aligned", 1, 2, 1, 96, 16, 64, 16, 64, 16, 0},
    {"d80 (partial lanes)", 1, 2, 1, 20, 0, 80, 2, 15, 4, 0},
    {"empty span, past 30, B2 GQA2", 2, 2, 1, 17, 30, 64, 0, 0, 4, 0},
    {"zero-length span at 5", 1, 2, 2, 20, 0, 64, 5, 0, 4, 0},
    {"decode q_len=1, past 45, B2", 2, 4, 2, 1, 45, 64, 0, 0, 8, 0},
    {"decode q_len=1, past 100, d128", 1, 8, 8, 1, 100, 128, 0, 0, 256, 0},
    {"decode step that is visual", 1, 2, 1, 1, 40, 64, 0, 1, 2, 0},
    {"chunk 4 after past 29 (spec dec)", 2, 4, 2, 4, 29, 128, 1, 2, 1, 0},
    {"span past end (clamped)", 1, 2, 2, 20, 0, 64, 15, 100, 4, 0},
    {"negative start (clamped)", 1, 2, 2, 24, 5, 64, -3, 10, 2, 0},
    {"q_len 1 tile+1, span 1..16", 1, 2, 2, 17, 0, 64, 1, 15, 3, 0},
    {"GQA7 (Qwen2-VL-7B-like), d128", 1, 14, 2, 70, 5, 128, 3, 60, 16, 0},
    {"decode GQA6 d128 past 300", 1, 12, 2, 1, 300, 128, 0, 0, 64, 0},
    {"MQA 16 heads d64, B2", 2, 16, 1, 40, 0, 64, 4, 30, 8, 0},
    {"G=64: one query per v2 block, d16", 1, 64, 1, 5, 3, 16, 1, 3, 2, 0},
    {"G=65: beyond v2, d16", 1, 65, 1, 3, 0, 16, 0, 3, 1, 0},
    {"tiny preset shape: d16 GQA2", 1, 4, 2, 90, 0, 16, 10, 64, 4, 0},
};

} // namespace

namespace
{

std::vector<Case> random_cases(int n, uint64_t seed)
{
    std::vector<Case> cases;
    std::mt19937_64 rng(seed);
    auto pick = [&](int lo, int hi) { return static_cast<int>(std::uniform_int_distribution<int>(lo, hi)(rng)); };
    int const dims[] = {32, 64, 64, 80, 128, 128, 256};
    for (int i = 0; i < n; ++i)
    {
        Case c{"random", 1, 1, 1, 1, 0, 64, 0, 0, 1, 1 + i % 2};
        c.batch = pick(1, 2);
        c.kv_heads = pick(1, 2);
        c.heads = c.kv_heads * pick(1, 3);
        c.q_len = pick(0, 3) == 0 ? pick(1, 4) : pick(5, 72);
        c.past = pick(0, 2) == 0 ? 0 : pick(1, 40);
        c.dim = dims[pick(0, 6)];
        int const kind = pick(0, 5); // 0: empty span, 1: span at start, 2: span to the end, else inside
        c.length = kind == 0 ? 0 : pick(1, c.q_len);
        c.start = kind == 1 ? 0 : kind == 2 ? c.q_len - c.length : pick(0, c.q_len - static_cast<int>(c.length));
        c.window = pick(0, 4) == 0 ? pick(1, 3) : pick(1, 48);
        cases.push_back(c);
    }
    return cases;
}

//! Every (W mod 16, past mod 16) pair around v1's 16-wide query and key tiles, fp32. With
//! --variant tc: fp16, every past mod 32 and W up to 65 around v2's 32-key tiles, alternating
//! GQA groups of 1 and 3 (query tiles of 64 and 21 queries).
std::vector<Case> sweep_cases()
{
    std::vector<Case> cases;
    std::vector<int> windows = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 31, 32, 33};
    if (g_tc_only)
    {
        windows.insert(windows.end(), {63, 64, 65});
    }
    int const pasts = g_tc_only ? 32 : 16;
    for (size_t wi = 0; wi < windows.size(); ++wi)
    {
        for (int past = 0; past < pasts; ++past)
        {
            for (int start : {0, 6})
            {
                int const heads = g_tc_only && (wi + past) % 2 ? 3 : 1;
                cases.push_back(Case{"sweep", 1, heads, 1, 40, past, 32, start, 40 - start, windows[wi],
                    g_tc_only ? 2 : 1});
            }
        }
    }
    return cases;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc >= 3 && std::string(argv[1]) == "--variant")
    {
        std::string const v = argv[2];
        g_f16 = v == "simt" ? rlens_hollow_attention_f16_simt : v == "tc" ? rlens_hollow_attention_f16_tc : g_f16;
        g_tc_only = v == "tc";
        if (v != "simt" && v != "tc" && v != "auto")
        {
            std::fprintf(stderr, "harness: --variant must be auto, simt or tc\n");
            return 2;
        }
        argv[2] = argv[0];
        argv += 2;
        argc -= 2;
    }
    std::vector<Case> cases;
    bool arg_checks = false;
    std::string const mode = argc >= 2 ? argv[1] : "";
    if (mode == "--case" && argc >= 11)
    {
        int x[9];
        for (int i = 0; i < 9; ++i)
        {
            x[i] = std::atoi(argv[2 + i]);
        }
        std::string const dt = argc >= 12 ? argv[11] : "both";
        cases.push_back(Case{"custom", x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8],
            dt == "f32" ? 1 : dt == "f16" ? 2 : 0});
    }
    else if (mode == "--sweep")
    {
        cases = sweep_cases();
    }
    else if (mode == "--random" && argc >= 3)
    {
        cases = random_cases(std::atoi(argv[2]), argc >= 4 ? std::strtoull(argv[3], nullptr, 10) : 7);
    }
    else if (mode == "--full")
    {
        cases = kCases;
        std::vector<Case> const sw = sweep_cases();
        std::vector<Case> const rnd
            = random_cases(argc >= 3 ? std::atoi(argv[2]) : 300, argc >= 4 ? std::strtoull(argv[3], nullptr, 10) : 7);
        cases.insert(cases.end(), sw.begin(), sw.end());
        cases.insert(cases.end(), rnd.begin(), rnd.end());
        arg_checks = true;
    }
    else if (mode.empty())
    {
        cases = kCases;
        arg_checks = true;
    }
    else
    {
        std::fprintf(stderr,
            "usage: harness [--full [N [SEED]] | --sweep | --random N [SEED] | --case B H Hkv S P D start len W "
            "[f32|f16|both]]\n");
        return 2;
    }

    int passed = 0, failed = 0, skipped = 0;
    double worst[2] = {0.0, 0.0};
    std::printf("%-34s %-5s %3s %3s %3s %4s %4s %4s %9s %4s  %-10s %6s  %s\n", "case", "dtype", "B", "H", "Hkv",
        "S", "P", "D", "span", "W", "max_abs", "sec", "result");
    for (size_t ci = 0; ci < cases.size(); ++ci)
    {
        Case const& c = cases[ci];
        for (int f = 0; f < 2; ++f)
        {
            bool const fp16 = f == 1;
            if ((c.dtypes == 1 && fp16) || (c.dtypes == 2 && !fp16))
            {
                continue;
            }
            if (fp16 && g_tc_only && !rlens_hollow_tc_supported(c.heads, c.kv_heads, c.dim))
            {
                ++skipped;
                continue;
            }
            Result const r = run_case(c, fp16, 1234 + ci);
            bool const ok = r.rc == 0 && r.nonfinite == 0 && r.worst_excess <= 0.0;
            (ok ? passed : failed) += 1;
            worst[f] = std::max(worst[f], r.max_abs);
            char span[32];
            std::snprintf(span, sizeof span, "%lld+%lld", static_cast<long long>(c.start),
                static_cast<long long>(c.length));
            std::printf("%-34s %-5s %3d %3d %3d %4d %4d %4d %9s %4d  %-10.3e %6.2f  %s", c.name, fp16 ? "f16" : "f32",
                c.batch, c.heads, c.kv_heads, c.q_len, c.past, c.dim, span, c.window, r.max_abs, r.seconds,
                ok ? "ok" : "FAIL");
            if (r.rc)
            {
                std::printf(" (rc=%d)", r.rc);
            }
            if (r.nonfinite)
            {
                std::printf(" (%ld non-finite/unwritten outputs)", r.nonfinite);
            }
            std::printf("\n");
            std::fflush(stdout);
        }
    }

    if (arg_checks) // argument checks of the host launcher: cudaErrorInvalidValue (1), no launch
    {
        float buf[64] = {};
        int64_t const span[2] = {0, 0};
        struct Bad
        {
            char const* name;
            int b, h, hkv, s, t, d, w;
        } const bad[] = {
            {"head_dim 0", 1, 1, 1, 1, 1, 0, 1},
            {"head_dim 257", 1, 1, 1, 1, 1, 257, 1},
            {"heads % kv_heads != 0", 1, 3, 2, 1, 1, 4, 1},
            {"kv_len < q_len", 1, 1, 1, 2, 1, 4, 1},
            {"window 0", 1, 1, 1, 1, 1, 4, 0},
        };
        for (auto const& x : bad)
        {
            int const rc = rlens_hollow_attention_f32(
                buf, buf, buf, span, buf, x.b, x.h, x.hkv, x.s, x.t, x.d, x.w, 1.0f, nullptr);
            bool const ok = rc == 1;
            (ok ? passed : failed) += 1;
            std::printf("%-34s rc=%d  %s\n", x.name, rc, ok ? "ok" : "FAIL (want 1 = cudaErrorInvalidValue)");
        }
        int const rc0 = rlens_hollow_attention_f32(buf, buf, buf, span, buf, 1, 1, 1, 0, 4, 4, 1, 1.0f, nullptr);
        (rc0 == 0 ? passed : failed) += 1;
        std::printf("%-34s rc=%d  %s\n", "q_len 0 (no launch)", rc0, rc0 == 0 ? "ok" : "FAIL");
    }
    std::printf("max_abs f32 %.3e f16 %.3e\n", worst[0], worst[1]);
    std::printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed == 0 ? 0 : 1;
}
