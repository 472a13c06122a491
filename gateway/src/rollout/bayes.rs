//! Posterior probabilities for the guard's Bayesian mode (`promote_on = "probability"`).
//!
//! Accuracy: each side's accuracy θ has a Beta(1 + correct, 1 + wrong) posterior (a uniform
//! prior updated by its Bernoulli outcomes). The guard asks P(θc > θp) (the canary is more
//! accurate) and P(θc < θp − δ) (it is worse by more than the margin), each
//! P(X > Y + s) = ∫ f_Y(y) (1 − F_X(y + s)) dy, integrated numerically (Simpson's rule over
//! ±10 standard deviations of Y, where all its mass is), with F_X the regularised incomplete
//! beta function (Lentz's continued fraction).
//!
//! Rewards: each side's mean has an approximately normal posterior N(mean, s²/n) (n ≥ 2), so
//! P(μc − μp > s) = Φ((mc − mp − s) / √(sc²/nc + sp²/np)).

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; relative error below 1e-13).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, &c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// The Beta(a, b) density at x.
fn beta_pdf(x: f64, a: f64, b: f64) -> f64 {
    // At the ends the density is 0, finite (a or b = 1: the posterior of a side with no
    // successes or no failures, where its mass is largest) or unbounded.
    let end = |shape: f64| {
        if shape > 1.0 {
            0.0
        } else if shape == 1.0 {
            (-ln_beta(a, b)).exp()
        } else {
            f64::INFINITY
        }
    };
    if x <= 0.0 {
        return end(a);
    }
    if x >= 1.0 {
        return end(b);
    }
    ((a - 1.0) * x.ln() + (b - 1.0) * (1.0 - x).ln() - ln_beta(a, b)).exp()
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_continued_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=10_000 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-14 {
            break;
        }
    }
    h
}

/// The Beta(a, b) distribution function at x: the regularised incomplete beta I_x(a, b).
pub fn beta_cdf(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (a * x.ln() + b * (1.0 - x).ln() - ln_beta(a, b)).exp();
    // The continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry
    // I_x(a, b) = 1 − I_{1−x}(b, a) beyond it.
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_continued_fraction(x, a, b) / a
    } else {
        1.0 - front * beta_continued_fraction(1.0 - x, b, a) / b
    }
}

/// One side's accuracy posterior: Beta(1 + correct, 1 + wrong).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AccuracyPosterior {
    a: f64,
    b: f64,
}

impl AccuracyPosterior {
    pub fn new(correct: u64, labeled: u64) -> AccuracyPosterior {
        AccuracyPosterior {
            a: 1.0 + correct as f64,
            b: 1.0 + labeled.saturating_sub(correct) as f64,
        }
    }

    fn mean(&self) -> f64 {
        self.a / (self.a + self.b)
    }

    fn sd(&self) -> f64 {
        let n = self.a + self.b;
        (self.a * self.b / (n * n * (n + 1.0))).sqrt()
    }
}

/// P(X > Y + shift) for independent accuracy posteriors X and Y.
pub fn probability_above(x: AccuracyPosterior, y: AccuracyPosterior, shift: f64) -> f64 {
    const INTERVALS: usize = 2000; // even, for Simpson's rule
    let lo = (y.mean() - 10.0 * y.sd()).max(0.0);
    let hi = (y.mean() + 10.0 * y.sd()).min(1.0);
    if hi <= lo {
        return 0.5;
    }
    let h = (hi - lo) / INTERVALS as f64;
    let integrand = |t: f64| beta_pdf(t, y.a, y.b) * (1.0 - beta_cdf(t + shift, x.a, x.b));
    let mut sum = integrand(lo) + integrand(hi);
    for i in 1..INTERVALS {
        let weight = if i % 2 == 1 { 4.0 } else { 2.0 };
        sum += weight * integrand(lo + i as f64 * h);
    }
    (sum * h / 3.0).clamp(0.0, 1.0)
}

/// P(μx − μy > shift) for two reward means with normal posteriors (mean, variance, count);
/// `None` with fewer than two rewards a side.
pub fn reward_probability_above(x: (f64, f64, u64), y: (f64, f64, u64), shift: f64) -> Option<f64> {
    if x.2 < 2 || y.2 < 2 {
        return None;
    }
    let se = (x.1 / x.2 as f64 + y.1 / y.2 as f64).sqrt();
    let diff = x.0 - y.0 - shift;
    if se <= 0.0 {
        return Some(if diff > 0.0 { 1.0 } else { 0.0 });
    }
    Some(normal_cdf(diff / se))
}

/// Φ(z), from the complementary error function (Numerical Recipes' erfc approximation,
/// relative error below 1.2e-7).
pub fn normal_cdf(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_and_beta_functions_match_known_values() {
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
        assert!((ln_gamma(101.0) - 363.739_375_555_563_5).abs() < 1e-9);
        // I_x(1, 1) = x; I_x(2, 1) = x²; I_0.5(a, a) = 0.5.
        assert!((beta_cdf(0.3, 1.0, 1.0) - 0.3).abs() < 1e-12);
        assert!((beta_cdf(0.3, 2.0, 1.0) - 0.09).abs() < 1e-12);
        assert!((beta_cdf(0.5, 40.0, 40.0) - 0.5).abs() < 1e-10);
        // I_0.2(2, 3) = 1 − (1 − 0.2)^3 (1 + 3·0.2) = 0.1808.
        assert!((beta_cdf(0.2, 2.0, 3.0) - 0.1808).abs() < 1e-10);
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(-3.090_232) - 0.001).abs() < 1e-6);
    }

    #[test]
    fn posterior_probabilities_match_closed_forms() {
        // Two uniform posteriors: P(X > Y) = 1/2, P(X > Y + s) = (1 − s)² / 2.
        let u = AccuracyPosterior::new(0, 0);
        assert!((probability_above(u, u, 0.0) - 0.5).abs() < 1e-6);
        assert!((probability_above(u, u, 0.2) - 0.32).abs() < 1e-4);
        // Complementary: P(X > Y) + P(Y > X) = 1.
        let (x, y) = (
            AccuracyPosterior::new(90, 100),
            AccuracyPosterior::new(850, 1000),
        );
        let sum = probability_above(x, y, 0.0) + probability_above(y, x, 0.0);
        assert!((sum - 1.0).abs() < 1e-6, "{sum}");
        // Large samples: close to the normal approximation of the difference.
        let (x, y) = (
            AccuracyPosterior::new(9_100, 10_000),
            AccuracyPosterior::new(9_000, 10_000),
        );
        let se = ((0.91 * 0.09 + 0.9 * 0.1) / 10_000f64).sqrt();
        let normal = normal_cdf(0.01 / se);
        assert!((probability_above(x, y, 0.0) - normal).abs() < 0.005);
    }

    #[test]
    fn clearly_better_and_clearly_worse_are_certain_quickly() {
        let good = AccuracyPosterior::new(97, 100);
        let weak = AccuracyPosterior::new(70, 100);
        assert!(probability_above(good, weak, 0.0) > 0.9999);
        assert!(probability_above(weak, good, -0.02) < 1e-4);
        // Wrong on everything against 97 %: worse beyond a 2-point margin, certainly.
        let wrong = AccuracyPosterior::new(0, 100);
        assert!(probability_above(good, wrong, 0.02) > 0.9999);
        // Equal and few: undecided.
        let p = probability_above(
            AccuracyPosterior::new(9, 10),
            AccuracyPosterior::new(9, 10),
            0.0,
        );
        assert!((p - 0.5).abs() < 1e-3, "{p}");
        assert_eq!(
            reward_probability_above((1.0, 0.0, 1), (0.0, 0.0, 5), 0.0),
            None
        );
        let p = reward_probability_above((0.12, 0.1, 1000), (0.10, 0.09, 1000), 0.0).unwrap();
        assert!(p > 0.9 && p < 0.95, "{p}");
    }
}
