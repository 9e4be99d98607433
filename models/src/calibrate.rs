//! Platt scaling: a monotone map of the model's short probabilities, fitted on the validation
//! days, that makes them mean what they say there (the raw scores of a model trained with
//! class weighting and early stopping drift from the observed rate). Serving applies the
//! map a version's manifest holds; it never changes the order of scores, only their values.

use serde::{Deserialize, Serialize};

/// `p' = σ(a · logit(p) + b)`, with `a > 0`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Platt {
    pub a: f64,
    pub b: f64,
}

const EDGE: f64 = 1e-7;

fn logit(p: f64) -> f64 {
    let p = p.clamp(EDGE, 1.0 - EDGE);
    (p / (1.0 - p)).ln()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl Platt {
    /// The map that leaves every probability as it is.
    pub const IDENTITY: Platt = Platt { a: 1.0, b: 0.0 };

    /// The calibrated short probability of a raw one.
    pub fn apply(&self, p_short: f64) -> f64 {
        sigmoid(self.a * logit(p_short) + self.b)
    }

    /// Fits `a` and `b` by Newton's method on the log loss of `labels` (1: shorted) under the
    /// mapped `p_short`. Without both classes, or when the fit would not be increasing, the
    /// identity.
    pub fn fit(labels: &[f32], p_short: &[f64]) -> Platt {
        let positives = labels.iter().filter(|label| **label == 1.0).count();
        if positives == 0 || positives == labels.len() {
            return Platt::IDENTITY;
        }
        let xs: Vec<f64> = p_short.iter().map(|p| logit(*p)).collect();
        let (mut a, mut b) = (1.0, 0.0);
        for _ in 0..100 {
            // gradient and Hessian of the summed log loss in (a, b), a small ridge keeping it invertible
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-9, 0.0, 1e-9);
            for (x, label) in xs.iter().zip(labels) {
                let q = sigmoid(a * x + b);
                let (residual, weight) = (q - f64::from(*label), q * (1.0 - q));
                ga += residual * x;
                gb += residual;
                haa += weight * x * x;
                hab += weight * x;
                hbb += weight;
            }
            let determinant = haa * hbb - hab * hab;
            if determinant.abs() < 1e-12 {
                break;
            }
            let (step_a, step_b) = ((hbb * ga - hab * gb) / determinant, (haa * gb - hab * ga) / determinant);
            a -= step_a;
            b -= step_b;
            if step_a.abs() < 1e-10 && step_b.abs() < 1e-10 {
                break;
            }
        }
        if a > 0.0 && a.is_finite() && b.is_finite() {
            Platt { a, b }
        } else {
            Platt::IDENTITY
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_twice_too_low_are_raised_to_the_observed_rate_in_order() {
        // the true short probability is twice the score
        let scores: Vec<f64> = (0..2000).map(|i| 0.005 + 0.2 * (i % 100) as f64 / 100.0).collect();
        let labels: Vec<f32> = scores.iter().enumerate().map(|(i, p)| f32::from(((i * 7919) % 1000) as f64 / 1000.0 < 2.0 * p)).collect();
        let platt = Platt::fit(&labels, &scores);
        let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len() as f64;
        let observed = labels.iter().map(|label| f64::from(*label)).sum::<f64>() / labels.len() as f64;
        let mapped: Vec<f64> = scores.iter().map(|p| platt.apply(*p)).collect();
        assert!((mean(&scores) - observed).abs() > 0.05, "the raw scores are off");
        assert!((mean(&mapped) - observed).abs() < 0.005, "{} vs {observed} with {platt:?}", mean(&mapped));
        assert!(mapped.windows(2).zip(scores.windows(2)).all(|(m, s)| (m[0] <= m[1]) == (s[0] <= s[1])), "the order of scores is kept");
        assert_eq!(Platt::fit(&[0.0, 0.0], &[0.1, 0.2]), Platt::IDENTITY, "one class");
        assert!((Platt::IDENTITY.apply(0.25) - 0.25).abs() < 1e-12);
    }
}
