//! Quantiles, means and confidence intervals.

use serde::Serialize;

/// The `q` quantile (nearest rank on the sorted values; 0 when empty).
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Student's t for a two-sided 95% interval with `df` degrees of freedom.
fn t95(df: usize) -> f64 {
    const T: [f64; 10] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    ];
    match df {
        0 => f64::NAN,
        1..=10 => T[df - 1],
        11..=30 => 2.1,
        _ => 1.96,
    }
}

/// A mean with its 95% confidence half-width over `n` replicates (`NaN` for one replicate).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Interval {
    pub mean: f64,
    pub ci95: f64,
    pub n: usize,
}

impl Interval {
    pub fn of(v: &[f64]) -> Self {
        let m = mean(v);
        let n = v.len();
        let ci95 = if n < 2 {
            f64::NAN
        } else {
            let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64;
            t95(n - 1) * (var / n as f64).sqrt()
        };
        Self { mean: m, ci95, n }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_by_hand() {
        // mean 2, sample variance 1, n 3: 4.303 * sqrt(1/3) = 2.4843.
        let i = Interval::of(&[1.0, 2.0, 3.0]);
        assert_eq!(i.mean, 2.0);
        assert!((i.ci95 - 2.4843).abs() < 1e-3, "{}", i.ci95);
        assert!(Interval::of(&[5.0]).ci95.is_nan());
        assert_eq!(quantile(&mut [3.0, 1.0, 2.0], 0.5), 2.0);
    }
}
