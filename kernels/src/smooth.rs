//! Smoothing of a motion trajectory: a Whittaker smoother (penalised second differences, the
//! discrete cubic smoothing spline; Whittaker 1923, Eilers, "A perfect smoother", Analytical
//! Chemistry 75, 3631–3636, 2003) whose strength is chosen from the data by generalised
//! cross-validation (Craven & Wahba, "Smoothing noisy data with spline functions", Numerische
//! Mathematik 31, 377–403, 1979).
//!
//! For measurements `y` of `n` frames the smoothed path `z` minimises
//! `‖y − z‖² + λ‖D z‖²`, `D` the `(n−2) × n` second-difference matrix, so a constant drift
//! costs nothing and only changes of velocity are penalised. With the eigen-decomposition
//! `DᵀD = Q diag(μ) Qᵀ` (computed once per frame count), `z = Q diag(1/(1+λμ)) Qᵀ y` and the
//! smoother's trace is `Σ 1/(1+λμᵢ)`, so every λ costs O(n). λ is the minimiser of
//! `GCV(λ) = N·RSS(λ) / (N − tr)²` over a log grid, both axes together (`N = 2n`): where the
//! per-frame estimates are precise (high dose, big frames) it follows fast starts and jitter;
//! where they are noisy it smooths more. No constant tuned per case. (The modified GCV of Kim
//! & Gu, which weights the trace by γ > 1 to smooth more, was tried on the tuning set of
//! `examples/motion_accuracy.rs`: γ = 1.4 and 2 were worse on four of five movies. λ by
//! restricted maximum likelihood instead, σ² profiled out, was better on five of the ten
//! movies of both sets and worse on five: no reason to change.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The smoother for one frame count.
#[derive(Debug, Clone)]
pub struct Whittaker {
    n: usize,
    /// Eigenvectors of `DᵀD`, column `k` at `q[i·n + k]`.
    q: Vec<f64>,
    /// Eigenvalues of `DᵀD`.
    mu: Vec<f64>,
}

/// Frame counts up to which the eigen-decomposition is made (Jacobi, O(n³)); longer
/// trajectories are smoothed with a fixed grid of λ by the caller's fallback.
pub const MAX_FRAMES: usize = 400;

/// log₁₀ λ searched: −3 … 9 in steps of 0.05.
const LOG_LAMBDA: (f64, f64, f64) = (-3.0, 9.0, 0.05);

impl Whittaker {
    /// The smoother for `n` frames, or `None` below 4 frames (nothing to smooth: two
    /// frames define a line) or above [`MAX_FRAMES`].
    pub fn new(n: usize) -> Option<Whittaker> {
        if !(4..=MAX_FRAMES).contains(&n) {
            return None;
        }
        // P = DᵀD: the pentadiagonal matrix of second differences.
        let mut p = vec![0.0f64; n * n];
        for r in 0..n - 2 {
            let d = [(r, 1.0), (r + 1, -2.0), (r + 2, 1.0)];
            for &(i, a) in &d {
                for &(j, b) in &d {
                    p[i * n + j] += a * b;
                }
            }
        }
        let (mu, q) = jacobi_eigen(p, n);
        Some(Whittaker { n, q, mu })
    }

    /// The smoother for `n` frames ([`Whittaker::new`]), made once per frame count and
    /// process: the decomposition is O(n³) (1 ms at 40 frames, 0.16 s at 200, 1.5 s at 400 on
    /// one core of the 2-core VM), and local motion smooths every patch's trajectory.
    pub fn for_frames(n: usize) -> Option<Arc<Whittaker>> {
        static MADE: Mutex<BTreeMap<usize, Arc<Whittaker>>> = Mutex::new(BTreeMap::new());
        let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = made.get(&n) {
            return Some(Arc::clone(w));
        }
        let w = Arc::new(Whittaker::new(n)?);
        made.insert(n, Arc::clone(&w));
        Some(w)
    }

    /// Smooths both axes of `path` in place with the λ that minimises GCV; returns that λ.
    ///
    /// # Panics
    /// If `path.len()` is not this smoother's frame count.
    pub fn smooth_gcv(&self, path: &mut [[f64; 2]]) -> f64 {
        let n = self.n;
        assert_eq!(path.len(), n, "Whittaker::smooth_gcv: frame count");
        // c = Qᵀy, both axes: c[k] = [x, y] coefficients of eigenvector k.
        let mut c = vec![[0.0f64; 2]; n];
        for (i, y) in path.iter().enumerate() {
            let row = &self.q[i * n..(i + 1) * n];
            for (ck, qk) in c.iter_mut().zip(row) {
                ck[0] += qk * y[0];
                ck[1] += qk * y[1];
            }
        }
        let total = 2.0 * n as f64;
        let mut best = (f64::INFINITY, 0.0);
        let (lo, hi, step) = LOG_LAMBDA;
        let steps = ((hi - lo) / step).round() as usize;
        for s in 0..=steps {
            let lambda = 10f64.powf(lo + step * s as f64);
            let mut rss = 0.0;
            let mut trace = 0.0;
            for (ck, mu) in c.iter().zip(&self.mu) {
                let h = 1.0 / (1.0 + lambda * mu);
                let r = 1.0 - h;
                rss += r * r * (ck[0] * ck[0] + ck[1] * ck[1]);
                trace += 2.0 * h;
            }
            let dof = total - trace;
            if dof <= 1e-9 {
                continue;
            }
            let gcv = total * rss / (dof * dof);
            if gcv < best.0 {
                best = (gcv, lambda);
            }
        }
        let lambda = best.1;
        let shrunk: Vec<[f64; 2]> = c
            .iter()
            .zip(&self.mu)
            .map(|(ck, mu)| {
                let h = 1.0 / (1.0 + lambda * mu);
                [h * ck[0], h * ck[1]]
            })
            .collect();
        for (i, y) in path.iter_mut().enumerate() {
            let row = &self.q[i * n..(i + 1) * n];
            let mut z = [0.0; 2];
            for (qk, hk) in row.iter().zip(&shrunk) {
                z[0] += qk * hk[0];
                z[1] += qk * hk[1];
            }
            *y = z;
        }
        lambda
    }
}

/// Eigenvalues and eigenvectors (columns, row-major `n × n`) of the symmetric matrix `a` by
/// cyclic Jacobi rotations.
fn jacobi_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-14 * scale {
            break;
        }
        for p in 0..n - 1 {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let app = a[p * n + p];
                let aqq = a[q * n + q];
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let akp = a[k * n + p];
                    let akq = a[k * n + q];
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let apk = a[p * n + k];
                    let aqk = a[q * n + k];
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let vkp = v[k * n + p];
                    let vkq = v[k * n + q];
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mu = (0..n).map(|i| a[i * n + i].max(0.0)).collect();
    (mu, v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SplitMix64;

    #[test]
    fn the_decomposition_reproduces_the_penalty() {
        let n = 12;
        let w = Whittaker::new(n).unwrap();
        // Two null directions (constant and linear), the rest positive.
        assert_eq!(w.mu.iter().filter(|&&m| m < 1e-9).count(), 2);
        // Q diag(μ) Qᵀ = DᵀD.
        for i in 0..n {
            for j in 0..n {
                let got: f64 = (0..n)
                    .map(|k| w.q[i * n + k] * w.mu[k] * w.q[j * n + k])
                    .sum();
                let want = {
                    let mut v = 0.0;
                    for r in 0..n - 2 {
                        let d = |x: usize| match x.wrapping_sub(r) {
                            0 => 1.0,
                            1 => -2.0,
                            2 => 1.0,
                            _ => 0.0,
                        };
                        v += d(i) * d(j);
                    }
                    v
                };
                assert!((got - want).abs() < 1e-9, "({i},{j}): {got} vs {want}");
            }
        }
    }

    #[test]
    fn a_straight_drift_is_kept_and_noise_is_smoothed_by_the_amount_it_needs() {
        let n = 40;
        let w = Whittaker::new(n).unwrap();
        let mut line: Vec<[f64; 2]> = (0..n).map(|f| [0.3 * f as f64, -0.1 * f as f64]).collect();
        let before = line.clone();
        w.smooth_gcv(&mut line);
        for (a, b) in line.iter().zip(&before) {
            assert!((a[0] - b[0]).abs() < 1e-9 && (a[1] - b[1]).abs() < 1e-9);
        }
        // A curved path with noise: the smoothed path is closer to the truth than the data,
        // and more so (relatively) for more noise.
        let mut rng = SplitMix64::new(3);
        let truth: Vec<[f64; 2]> = (0..n)
            .map(|f| {
                let t = f as f64 / (n - 1) as f64;
                [10.0 * (1.0 - (-t / 0.2).exp()), 4.0 * (3.0 * t).sin()]
            })
            .collect();
        let err = |a: &[[f64; 2]]| {
            (a.iter()
                .zip(&truth)
                .map(|(p, q)| (p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2))
                .sum::<f64>()
                / (2 * n) as f64)
                .sqrt()
        };
        let mut lambdas = Vec::new();
        for sigma in [0.02, 0.3] {
            let mut y: Vec<[f64; 2]> = truth
                .iter()
                .map(|p| [p[0] + sigma * rng.normal(), p[1] + sigma * rng.normal()])
                .collect();
            let raw = err(&y);
            lambdas.push(w.smooth_gcv(&mut y));
            let smoothed = err(&y);
            assert!(smoothed < raw, "σ {sigma}: {smoothed} vs raw {raw}");
        }
        assert!(
            lambdas[1] > 10.0 * lambdas[0],
            "more noise, more smoothing: {lambdas:?}"
        );
        assert!(Whittaker::new(3).is_none() && Whittaker::new(MAX_FRAMES + 1).is_none());
        let (a, b) = (
            Whittaker::for_frames(n).unwrap(),
            Whittaker::for_frames(n).unwrap(),
        );
        assert!(Arc::ptr_eq(&a, &b), "made once per frame count");
    }
}
