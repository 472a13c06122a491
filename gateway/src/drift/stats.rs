//! The two drift statistics, computed from counts of rows in the reference's bins.

/// Proportions below this count as this in PSI. An empty bin would otherwise make `ln(a/e)`
/// infinite; 1e-4 is what the reference script in `tests/fixtures/drift` uses too, and it caps
/// one empty bin's contribution at about `e * ln(e / 1e-4)` (0.069 for a 10 % bin).
pub const PSI_EPSILON: f64 = 1e-4;

/// Population stability index of `actual` counts against `expected` proportions over the same
/// bins: `sum((a - e) * ln(a / e))`, both clamped to at least [`PSI_EPSILON`]. `None` when
/// `actual` holds no rows.
pub fn psi(expected: &[f64], actual: &[u64]) -> Option<f64> {
    let total: u64 = actual.iter().sum();
    if total == 0 || expected.len() != actual.len() {
        return None;
    }
    let total = total as f64;
    Some(
        expected
            .iter()
            .zip(actual)
            .map(|(&e, &a)| {
                let e = e.max(PSI_EPSILON);
                let a = (a as f64 / total).max(PSI_EPSILON);
                (a - e) * (a / e).ln()
            })
            .sum(),
    )
}

/// PSI between two count vectors over the same bins, e.g. canary against primary predictions
/// binned by one profile. `None` when either is empty.
pub fn psi_between(expected: &[u64], actual: &[u64]) -> Option<f64> {
    let total: u64 = expected.iter().sum();
    if total == 0 {
        return None;
    }
    let proportions: Vec<f64> = expected.iter().map(|&n| n as f64 / total as f64).collect();
    psi(&proportions, actual)
}

/// The Kolmogorov-Smirnov statistic evaluated at the reference's fine quantile edges:
/// `max_i |F_window(edge_i) - F_ref(edge_i)|`.
///
/// `counts[b]` holds the rows with exactly `b` edges strictly below them (so
/// `counts.len() == reference_cdf.len() + 1`), which makes `F_window(edge_i)` the sum of
/// `counts[..=i]` exactly, ties included; `reference_cdf[i]` is the reference sample's exact
/// CDF at `edge_i`. Between two edges both CDFs are monotone, so the true statistic exceeds
/// this one by at most the larger mass either sample puts between adjacent edges: about
/// 1/K of the reference with K fine quantiles, and in practice much less, because the
/// supremum sits where the two densities cross.
pub fn ks_at_edges(reference_cdf: &[f64], counts: &[u64]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 || counts.len() != reference_cdf.len() + 1 {
        return None;
    }
    let mut below = 0u64;
    let mut largest = 0.0f64;
    for (&reference, &count) in reference_cdf.iter().zip(counts) {
        below += count;
        largest = largest.max((below as f64 / total as f64 - reference).abs());
    }
    Some(largest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_of_identical_distributions_is_zero() {
        assert_eq!(psi(&[0.5, 0.5], &[10, 10]), Some(0.0));
        assert_eq!(psi(&[0.5, 0.5], &[0, 0]), None);
    }

    #[test]
    fn psi_by_hand() {
        // (0.8-0.5) ln(0.8/0.5) + (0.2-0.5) ln(0.2/0.5)
        let want = 0.3 * (1.6f64).ln() + (-0.3) * (0.4f64).ln();
        assert!((psi(&[0.5, 0.5], &[8, 2]).unwrap() - want).abs() < 1e-12);
        // An empty bin is clamped, not infinite.
        let clamped = psi(&[0.5, 0.5], &[10, 0]).unwrap();
        let want =
            (1.0 - 0.5) * (1.0f64 / 0.5).ln() + (PSI_EPSILON - 0.5) * (PSI_EPSILON / 0.5).ln();
        assert!((clamped - want).abs() < 1e-12, "{clamped}");
        assert!(
            (psi_between(&[5, 5], &[8, 2]).unwrap() - psi(&[0.5, 0.5], &[8, 2]).unwrap()).abs()
                < 1e-12
        );
    }

    #[test]
    fn ks_at_edges_by_hand() {
        // Edges at 1, 2, 3 with reference CDF 0.25, 0.5, 1.0; the window has rows at or below
        // 1 (bin 0), in (2, 3] (bin 2) and above 3 (bin 3).
        let ks = ks_at_edges(&[0.25, 0.5, 1.0], &[1, 0, 2, 1]).unwrap();
        // F_window at the edges: 0.25, 0.25, 0.75 -> largest gap 0.25 (at 2 and at 3).
        assert!((ks - 0.25).abs() < 1e-12, "{ks}");
        assert_eq!(ks_at_edges(&[0.5], &[0, 0]), None);
    }
}
