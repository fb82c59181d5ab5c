/* Black-Scholes option pricing as a harvest function (rFaaS C ABI), after PARSEC's blackscholes:
 * the input is n options of 5 doubles (spot S, strike K, rate r, volatility v, time T), the
 * output n pairs of doubles (call, put). The cumulative normal distribution is PARSEC's
 * polynomial approximation, which experiments/src/cmd/offload/mod.rs computes the same way for
 * the application's own threads, so both give the same prices. Each option is priced `passes`
 * times (the same price each time), as PARSEC's NUM_RUNS does to set the work per byte. */
#include <math.h>
#include <stdint.h>

static double cndf(double x) {
    int negative = x < 0.0;
    if (negative) x = -x;
    double k = 1.0 / (1.0 + 0.2316419 * x);
    double poly = k * (0.319381530 + k * (-0.356563782 + k * (1.781477937 + k * (-1.821255978 + k * 1.330274429))));
    double n = 1.0 - 0.3989422804014327 * exp(-0.5 * x * x) * poly;
    return negative ? 1.0 - n : n;
}

/* The input starts with the number of passes (a uint64_t: PARSEC prices every option NUM_RUNS
 * times), then the options. */
uint32_t blackscholes(void *in, uint32_t len, void *out) {
    if (len < sizeof(uint64_t)) return 0;
    uint64_t passes = *(const uint64_t *)in;
    const double *o = (const double *)((const char *)in + sizeof(uint64_t));
    double *p = out;
    uint32_t n = (len - sizeof(uint64_t)) / (5 * sizeof(double));
    for (uint64_t pass = 0; pass < passes; pass++)
    for (uint32_t i = 0; i < n; i++) {
        double s = o[5 * i], k = o[5 * i + 1], r = o[5 * i + 2], v = o[5 * i + 3], t = o[5 * i + 4];
        double sq = v * sqrt(t);
        double d1 = (log(s / k) + (r + 0.5 * v * v) * t) / sq;
        double d2 = d1 - sq;
        double df = k * exp(-r * t);
        p[2 * i] = s * cndf(d1) - df * cndf(d2);
        p[2 * i + 1] = df * cndf(-d2) - s * cndf(-d1);
    }
    return n * 2 * sizeof(double);
}
