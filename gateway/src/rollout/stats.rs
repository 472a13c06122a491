//! The statistics behind the guard's decisions. Each test asks whether the evidence against
//! the canary is strong enough at the rollout's `confidence`, so that a handful of requests can
//! never condemn (or excuse) a version by chance, while a clearly bad one is caught as soon as
//! the numbers prove it.
//!
//! - Error rate: a one-sided two-proportion z-test with a margin. H0: the canary's error rate
//!   exceeds the primary's by at most `max_error_rate_increase` (δ). With Agresti–Caffo
//!   estimates p̃ = (errors + 1) / (requests + 2), which keep the test sane at zero errors,
//!   z = (p̃c − p̃p − δ) / √(p̃c(1 − p̃c)/(nc + 2) + p̃p(1 − p̃p)/(np + 2)); breach when
//!   z > Φ⁻¹(confidence) (3.09 at 0.999).
//! - Latency: an exact one-sided binomial test. If the canary's p99 were at most
//!   `max_p99_ratio` × the primary's p99, at most 1% of its requests would be slower than that
//!   bound; breach when the count of slower canary requests has P(X ≥ count | n, 0.01) below
//!   1 − confidence. The primary's p99 is taken at its upper confidence bound (its quantile
//!   0.99 + z·√(0.99·0.01/n)), and the bound is at least that p99 + `min_p99_increase`, so
//!   that neither a thinly observed primary nor sub-millisecond jitter decides.
//! - Predictions: the population stability index Σ (p − q) ln(p / q) over the bins either side
//!   used (counts + 0.5, so an empty bin is finite). Two samples of one distribution still
//!   differ: nc·np/(nc + np) · PSI is then about χ² with (bins − 1) degrees of freedom, so the
//!   guard subtracts the allowance χ²(confidence; bins − 1) · (1/nc + 1/np) and breaches only
//!   when what is left exceeds `max_prediction_psi`.
//! - Shadow agreement: the Wilson score upper bound of the agreeing share; the stage fails
//!   early once even that bound is below `min_agreement`.
//! - Accuracy (from joined label outcomes): the error-rate test above on wrong answers. H0:
//!   the canary's share of wrong answers exceeds the primary's by at most
//!   `max_accuracy_decrease`; breach when z > Φ⁻¹(confidence). The Agresti–Caffo estimates
//!   make it sample-size-aware: 100 outcomes a side prove a 0 %-against-97 % canary wrong, a
//!   handful prove nothing.
//! - Rewards: a one-sided Welch z-test on the means with the margin `max_reward_decrease`:
//!   z = (r̄p − r̄c − δ) / √(sc²/nc + sp²/np); breach when z > Φ⁻¹(confidence).
//! - The Bayesian mode's posterior probabilities are in [`super::bayes`].

use serde::Serialize;

/// Φ⁻¹(p), the standard normal quantile (Acklam's rational approximation, relative error
/// below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.02425;
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    }
}

/// The `p` quantile of χ² with `df` degrees of freedom (Wilson–Hilferty; within a few percent
/// for df ≥ 1 at the levels used here, and on the high side in the tail, i.e. cautious).
pub fn chi2_quantile(p: f64, df: f64) -> f64 {
    let h = 2.0 / (9.0 * df);
    let cube = 1.0 - h + normal_quantile(p) * h.sqrt();
    df * cube.max(0.0).powi(3)
}

/// The error-rate test's numbers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorTest {
    /// Canary error rate minus primary error rate (raw fractions).
    pub increase: f64,
    pub z: f64,
    /// z above which the canary breaches.
    pub z_limit: f64,
    pub breach: bool,
}

pub fn error_rate_test(
    canary: (u64, u64),
    primary: (u64, u64),
    margin: f64,
    confidence: f64,
) -> ErrorTest {
    let rate = |(errors, n): (u64, u64)| {
        if n == 0 {
            0.0
        } else {
            errors as f64 / n as f64
        }
    };
    let adjusted = |(errors, n): (u64, u64)| {
        let n = n as f64 + 2.0;
        ((errors as f64 + 1.0) / n, n)
    };
    let (pc, nc) = adjusted(canary);
    let (pp, np) = adjusted(primary);
    let se = (pc * (1.0 - pc) / nc + pp * (1.0 - pp) / np).sqrt();
    let z = (pc - pp - margin) / se;
    let z_limit = normal_quantile(confidence);
    ErrorTest {
        increase: rate(canary) - rate(primary),
        z,
        z_limit,
        breach: z > z_limit,
    }
}

/// The reward test: (z, z limit, breach) for canary and primary (mean, sample variance,
/// count) and the margin.
pub fn reward_test(
    canary: (f64, f64, u64),
    primary: (f64, f64, u64),
    margin: f64,
    confidence: f64,
) -> (f64, f64, bool) {
    // A side whose rewards never varied still has the uncertainty of a handful of samples.
    let variance = |v: f64, n: u64| v.max(1e-12) / n.max(1) as f64;
    let se = (variance(canary.1, canary.2) + variance(primary.1, primary.2)).sqrt();
    let z = (primary.0 - canary.0 - margin) / se;
    let z_limit = normal_quantile(confidence);
    (z, z_limit, z > z_limit)
}

/// P(X ≥ k) for X ~ Binomial(n, p). Terms are summed upward from k in log space; an answer
/// is only needed when it is small, so k at or below the mean returns 1.
pub fn binomial_upper_tail(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 || k as f64 <= n as f64 * p {
        return 1.0;
    }
    // ln C(n, k) = Σ_{i=1..k} ln((n − k + i) / i).
    let ln_choose: f64 = (1..=k).map(|i| ((n - k + i) as f64 / i as f64).ln()).sum();
    let mut term = (ln_choose + k as f64 * p.ln() + (n - k) as f64 * (1.0 - p).ln()).exp();
    let mut sum = 0.0;
    let odds = p / (1.0 - p);
    for i in k..=n {
        sum += term;
        if term <= sum * 1e-17 {
            break;
        }
        term *= (n - i) as f64 / (i + 1) as f64 * odds;
    }
    sum.min(1.0)
}

/// The latency test's numbers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyTest {
    /// What counts as slow, in milliseconds: `max_p99_ratio` × the primary's p99 (at its upper
    /// confidence bound), and at least that p99 + `min_p99_increase`.
    pub bound_ms: f64,
    /// Canary requests slower than the bound.
    pub slower: u64,
    /// P(at least that many | the canary's p99 is within the bound).
    pub p_value: f64,
    pub breach: bool,
}

pub fn latency_test(slower: u64, requests: u64, bound_ms: f64, confidence: f64) -> LatencyTest {
    let p_value = binomial_upper_tail(slower, requests, 0.01);
    LatencyTest {
        bound_ms,
        slower,
        p_value,
        breach: p_value < 1.0 - confidence,
    }
}

/// The prediction-divergence test's numbers for one histogram.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PsiTest {
    pub psi: f64,
    /// What sampling noise alone could add at the rollout's confidence.
    pub allowance: f64,
    /// Bins either side used.
    pub bins: usize,
    pub breach: bool,
}

/// PSI between two histograms over the same bins; `None` when either side is empty.
pub fn psi_test(canary: &[u64], primary: &[u64], limit: f64, confidence: f64) -> Option<PsiTest> {
    let (nc, np): (u64, u64) = (canary.iter().sum(), primary.iter().sum());
    if nc == 0 || np == 0 {
        return None;
    }
    let used: Vec<(f64, f64)> = canary
        .iter()
        .zip(primary)
        .filter(|(c, p)| **c + **p > 0)
        .map(|(&c, &p)| (c as f64 + 0.5, p as f64 + 0.5))
        .collect();
    let (sc, sp) = used
        .iter()
        .fold((0.0, 0.0), |(a, b), (c, p)| (a + c, b + p));
    let psi: f64 = used
        .iter()
        .map(|(c, p)| {
            let (c, p) = (c / sc, p / sp);
            (c - p) * (c / p).ln()
        })
        .sum();
    let df = (used.len() as f64 - 1.0).max(1.0);
    let allowance = chi2_quantile(confidence, df) * (1.0 / nc as f64 + 1.0 / np as f64);
    Some(PsiTest {
        psi,
        allowance,
        bins: used.len(),
        breach: psi - allowance > limit,
    })
}

/// The Wilson score interval's upper bound for `successes` of `n` at one-sided `confidence`.
pub fn wilson_upper(successes: u64, n: u64, confidence: f64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let z = normal_quantile(confidence);
    let (n, p) = (n as f64, successes as f64 / n as f64);
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre + spread) / (1.0 + z2 / n)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        assert!((normal_quantile(0.999) - 3.090_232).abs() < 1e-5);
        assert!((normal_quantile(0.975) - 1.959_964).abs() < 1e-5);
        assert!((normal_quantile(0.5)).abs() < 1e-9);
        assert!((normal_quantile(0.001) + 3.090_232).abs() < 1e-5);
        // Exact: 27.877 (df 9), 10.828 (df 1), 16.919 (0.95, df 9).
        assert!((chi2_quantile(0.999, 9.0) - 27.877).abs() / 27.877 < 0.02);
        assert!((chi2_quantile(0.95, 9.0) - 16.919).abs() / 16.919 < 0.02);
        assert!((chi2_quantile(0.999, 1.0) - 10.828).abs() / 10.828 < 0.05);
    }

    #[test]
    fn error_test_needs_evidence_at_small_n_and_sees_it_at_large_n() {
        let test = |c, p| error_rate_test(c, p, 0.01, 0.999).breach;
        // 1 error in 10 is 10%, but ten requests prove nothing.
        assert!(!test((1, 10), (0, 1000)));
        // 2 of 20: still not enough.
        assert!(!test((2, 20), (0, 400)));
        // 20% of 100 against none of 1000: proven.
        assert!(test((20, 100), (0, 1000)));
        // 3% against 1% over 10k requests each: more than the one-point margin, proven.
        assert!(test((300, 10_000), (100, 10_000)));
        // 1.5% against 1% is within the one-point margin, however many requests.
        assert!(!test((1500, 100_000), (1000, 100_000)));
        // Zero errors everywhere is not a breach, even with no margin.
        assert!(!error_rate_test((0, 50), (0, 5000), 0.0, 0.999).breach);
    }

    #[test]
    fn binomial_tail_matches_exact_values() {
        // P(X >= 2 | 100, 0.01) = 1 - 0.99^100 - 100 * 0.01 * 0.99^99 = 0.26424.
        assert!((binomial_upper_tail(2, 100, 0.01) - 0.264_238).abs() < 1e-5);
        // P(X >= 5 | 50, 0.01) = 0.000 145 8.
        let p = binomial_upper_tail(5, 50, 0.01);
        assert!((p - 1.458e-4).abs() < 2e-6, "{p}");
        let p = binomial_upper_tail(50, 50, 0.01);
        assert!((p / 1e-100 - 1.0).abs() < 1e-9, "{p}");
        assert_eq!(binomial_upper_tail(0, 50, 0.01), 1.0);
        // Large n stays finite and small.
        let p = binomial_upper_tail(2_000, 100_000, 0.01);
        assert!(p < 1e-20, "{p}");
    }

    #[test]
    fn latency_test_counts_slow_requests_against_one_percent() {
        // Every one of 50 canary requests slower than 1.5x the primary's p99.
        assert!(latency_test(50, 50, 3.0, 0.999).breach);
        // 2 of 50 can happen to a healthy canary.
        assert!(!latency_test(2, 50, 3.0, 0.999).breach);
        // 3% of 5000 cannot.
        assert!(latency_test(150, 5000, 3.0, 0.999).breach);
    }

    #[test]
    fn psi_allows_for_sampling_noise() {
        let uniform = [100u64; 10];
        // A small sample of the same distribution: raw PSI is well above zero, but within noise.
        let small = [3u64, 7, 4, 6, 5, 2, 8, 5, 6, 4];
        let t = psi_test(&small, &uniform, 0.2, 0.999).unwrap();
        assert!(t.psi > 0.05 && !t.breach, "{t:?}");
        // All mass on two labels: a different model.
        let skewed = [0u64, 0, 0, 0, 0, 30, 0, 20, 0, 0];
        let t = psi_test(&skewed, &uniform, 0.2, 0.999).unwrap();
        assert!(t.breach, "{t:?}");
        assert_eq!(psi_test(&[0; 10], &uniform, 0.2, 0.999), None);
        // Identical histograms: zero.
        let t = psi_test(&uniform, &uniform, 0.2, 0.999).unwrap();
        assert!(t.psi.abs() < 1e-12);
    }

    #[test]
    fn wilson_bound() {
        // 47 of 503 agree: even the upper bound is far below 90%.
        assert!(wilson_upper(47, 503, 0.999) < 0.15);
        // 85 of 100 might still be 90%.
        assert!(wilson_upper(85, 100, 0.999) > 0.9);
        assert_eq!(wilson_upper(0, 0, 0.999), 1.0);
    }
}
