//! Smoothing of a motion trajectory: a Whittaker smoother of third differences (Whittaker,
//! "On a new method of graduation", Proc. Edinburgh Math. Soc. 41, 63–75, 1923, which
//! penalised third differences; Eilers, "A perfect smoother", Analytical Chemistry 75,
//! 3631–3636, 2003) whose strength is chosen from the data: by Mallows' `C_p` when the
//! measurements' variance is known (the motion estimator measures it from the cross-power
//! spectra: [`crate::motion::shift_variance`]), else by restricted maximum likelihood (REML;
//! Wahba, "A comparison of GCV and GML for choosing the smoothing parameter in the generalized
//! spline smoothing problem", Annals of Statistics 13, 1378–1402, 1985).
//!
//! For measurements `y` of `n` frames the smoothed path `z` minimises
//! `‖y − z‖² + λ‖D z‖²`, `D` the `(n−d) × n` matrix of `d`-th differences ([`ORDER`] = 3 for
//! the estimator), so a constant drift and a constant acceleration cost nothing and only
//! changes of acceleration are penalised. With the eigen-decomposition `DᵀD = Q diag(μ) Qᵀ`
//! (computed once per frame count and order), `z = Q diag(hₖ) Qᵀ y` with `hₖ = 1/(1+λμₖ)`,
//! so every λ costs O(n). λ is searched over a log grid, both axes together (`c = Qᵀy`):
//!
//! - **`C_p`** (noise variance σ² per frame and axis known): the minimiser of
//!   `Σₖ (1−hₖ)²|cₖ|² + 2σ²·2Σₖ hₖ`, an unbiased estimate (up to a constant) of the squared
//!   error against the true path: precise measurements (high dose, big frames) get a small λ
//!   and keep a fast start and a random walk of jitter; noisy ones are smoothed more.
//! - **REML** (σ² unknown, profiled out): the maximiser of the restricted likelihood of "`z` a
//!   Gaussian process with precision `(λ/σ²)·DᵀD`, flat on the null space of `D`, `y = z` plus
//!   white noise": `−2 log L(λ) = 2(n−d)·log Σₖ rₖ|cₖ|² − 2·Σ_{μₖ>0} log rₖ`, `rₖ = 1 − hₖ`.
//!   It cannot tell a random walk of jitter from measurement noise, so where the noise is low
//!   it smooths jitter away (4096² × 40 at 1 e/px: 0.043 px against 0.015 px with `C_p`).
//!
//! How this was chosen (docs/benchmarks.md, "Motion: the smoother's strength from the measured
//! noise"): second differences with λ by generalised cross-validation (Craven & Wahba 1979)
//! were the default until GCV was found to have no interior minimum on some low-dose movies
//! (its score tends to a finite limit as λ → 0, where it was lowest) and not to smooth at all
//! there: 0.12 px where the best second-difference smoother gets 0.09. With the noise
//! measured, `C_p` needs no such guess. Third differences rather than second: in an offline
//! study of `C_p` given the measurements' realised variance, the largest error on ten
//! low-dose seeds was 0.093 px with third differences and 0.103 px with second, and on ten
//! 2048² seeds the mean was the same (0.033 and 0.034 px). No constant is tuned per case.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The smoother for one frame count and difference order.
#[derive(Debug, Clone)]
pub struct Whittaker {
    n: usize,
    /// Order of the penalised differences.
    order: usize,
    /// Eigenvectors of `DᵀD`, column `k` at `q[i·n + k]`.
    q: Vec<f64>,
    /// Eigenvalues of `DᵀD`.
    mu: Vec<f64>,
}

/// Order of the differences the motion estimator's smoother penalises (module docs).
pub const ORDER: usize = 3;

/// Frame counts up to which the eigen-decomposition is made (Jacobi, O(n³)); longer
/// trajectories are smoothed with a fixed grid of λ by the caller's fallback.
pub const MAX_FRAMES: usize = 400;

/// log₁₀ λ searched: −3 … 9 in steps of 0.05.
const LOG_LAMBDA: (f64, f64, f64) = (-3.0, 9.0, 0.05);

impl Whittaker {
    /// The smoother of `order`-th differences (2 or 3) for `n` frames, or `None` unless
    /// there are at least `order + 2` frames (fewer leave at most one penalised direction)
    /// and at most [`MAX_FRAMES`].
    pub fn new(n: usize, order: usize) -> Option<Whittaker> {
        let coeffs: &[f64] = match order {
            2 => &[1.0, -2.0, 1.0],
            3 => &[-1.0, 3.0, -3.0, 1.0],
            _ => return None,
        };
        if !(order + 2..=MAX_FRAMES).contains(&n) {
            return None;
        }
        // P = DᵀD: the banded matrix of `order`-th differences.
        let mut p = vec![0.0f64; n * n];
        for r in 0..n - order {
            for (a_i, &a) in coeffs.iter().enumerate() {
                for (b_i, &b) in coeffs.iter().enumerate() {
                    p[(r + a_i) * n + r + b_i] += a * b;
                }
            }
        }
        let (mu, q) = jacobi_eigen(p, n);
        Some(Whittaker { n, order, q, mu })
    }

    /// The smoother [`Whittaker::new`], made once per frame count, order and process: the
    /// decomposition is O(n³) (1 ms at 40 frames, 0.16 s at 200, 1.5 s at 400 on one core of
    /// the 2-core VM), and local motion smooths every patch's trajectory.
    pub fn for_frames(n: usize, order: usize) -> Option<Arc<Whittaker>> {
        static MADE: Mutex<BTreeMap<(usize, usize), Arc<Whittaker>>> = Mutex::new(BTreeMap::new());
        let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = made.get(&(n, order)) {
            return Some(Arc::clone(w));
        }
        let w = Arc::new(Whittaker::new(n, order)?);
        made.insert((n, order), Arc::clone(&w));
        Some(w)
    }

    /// Smooths both axes of `path` in place and returns the λ used: the minimiser of Mallows'
    /// `C_p` when the measurements' variance `noise` (per frame and axis) is known, else that
    /// of restricted maximum likelihood (module docs).
    ///
    /// # Panics
    /// If `path.len()` is not this smoother's frame count.
    pub fn smooth(&self, path: &mut [[f64; 2]], noise: Option<f64>) -> f64 {
        assert_eq!(path.len(), self.n, "Whittaker::smooth: frame count");
        let c = self.coefficients(path);
        let lambda = match noise {
            Some(variance) => self.lambda_cp(&c, variance),
            None => self.lambda_reml(&c),
        };
        self.apply(path, &c, lambda);
        lambda
    }

    /// The λ of the log grid that minimises `C_p(λ) = RSS(λ) + 2σ²·tr H(λ)`, an unbiased
    /// estimate of `‖z(λ) − truth‖²` up to a constant (Mallows, "Some comments on C_p",
    /// Technometrics 15, 661–675, 1973).
    fn lambda_cp(&self, c: &[[f64; 2]], variance: f64) -> f64 {
        let mut best = (f64::INFINITY, 0.0);
        for lambda in lambda_grid() {
            let mut rss = 0.0;
            let mut trace = 0.0;
            for (ck, mu) in c.iter().zip(&self.mu) {
                let h = 1.0 / (1.0 + lambda * mu);
                rss += (1.0 - h) * (1.0 - h) * (ck[0] * ck[0] + ck[1] * ck[1]);
                trace += 2.0 * h;
            }
            let cp = rss + 2.0 * variance * trace;
            if cp < best.0 {
                best = (cp, lambda);
            }
        }
        best.1
    }

    /// The λ of the log grid that maximises the restricted likelihood (module docs).
    fn lambda_reml(&self, c: &[[f64; 2]]) -> f64 {
        let n = self.n;
        let top = self.mu.iter().cloned().fold(0.0, f64::max);
        let dof = 2.0 * (n - self.order) as f64;
        let mut best = (f64::INFINITY, 0.0);
        for lambda in lambda_grid() {
            let mut quad = 0.0;
            let mut logdet = 0.0;
            for (ck, mu) in c.iter().zip(&self.mu) {
                if *mu <= 1e-9 * top {
                    continue;
                }
                let r = lambda * mu / (1.0 + lambda * mu);
                quad += r * (ck[0] * ck[0] + ck[1] * ck[1]);
                logdet += 2.0 * r.ln();
            }
            if quad <= 0.0 {
                continue;
            }
            let score = dof * quad.ln() - logdet;
            if score < best.0 {
                best = (score, lambda);
            }
        }
        best.1
    }

    /// `Qᵀy` of both axes: `c[k]` holds the `[x, y]` coefficients of eigenvector `k`.
    fn coefficients(&self, path: &[[f64; 2]]) -> Vec<[f64; 2]> {
        let n = self.n;
        let mut c = vec![[0.0f64; 2]; n];
        for (i, y) in path.iter().enumerate() {
            let row = &self.q[i * n..(i + 1) * n];
            for (ck, qk) in c.iter_mut().zip(row) {
                ck[0] += qk * y[0];
                ck[1] += qk * y[1];
            }
        }
        c
    }

    /// Writes the smoothed path for `lambda` from the coefficients `c` into `path`.
    fn apply(&self, path: &mut [[f64; 2]], c: &[[f64; 2]], lambda: f64) {
        let n = self.n;
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
    }
}

/// The λ searched: [`LOG_LAMBDA`].
fn lambda_grid() -> impl Iterator<Item = f64> {
    let (lo, hi, step) = LOG_LAMBDA;
    let steps = ((hi - lo) / step).round() as usize;
    (0..=steps).map(move |s| 10f64.powf(lo + step * s as f64))
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

    /// RMS over frames and axes of `a − truth`.
    fn rms(a: &[[f64; 2]], truth: &[[f64; 2]]) -> f64 {
        let sum: f64 = a
            .iter()
            .zip(truth)
            .map(|(p, q)| (p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2))
            .sum();
        (sum / (2 * a.len()) as f64).sqrt()
    }

    /// `truth` with Gaussian noise of `sigma` on each axis of each frame.
    fn measured(truth: &[[f64; 2]], sigma: f64, rng: &mut SplitMix64) -> Vec<[f64; 2]> {
        truth
            .iter()
            .map(|p| [p[0] + sigma * rng.normal(), p[1] + sigma * rng.normal()])
            .collect()
    }

    #[test]
    fn the_decomposition_reproduces_the_penalty() {
        let n = 12;
        for (order, coeffs) in [(2, vec![1.0, -2.0, 1.0]), (3, vec![-1.0, 3.0, -3.0, 1.0])] {
            let w = Whittaker::new(n, order).unwrap();
            // `order` null directions (polynomials of lower degree), the rest positive.
            let top = w.mu.iter().cloned().fold(0.0, f64::max);
            assert_eq!(w.mu.iter().filter(|&&m| m < 1e-9 * top).count(), order);
            // Q diag(μ) Qᵀ = DᵀD, D written out here independently of `new`.
            for i in 0..n {
                for j in 0..n {
                    let got: f64 = (0..n)
                        .map(|k| w.q[i * n + k] * w.mu[k] * w.q[j * n + k])
                        .sum();
                    let d =
                        |r: usize, x: usize| coeffs.get(x.wrapping_sub(r)).copied().unwrap_or(0.0);
                    let want: f64 = (0..n - order).map(|r| d(r, i) * d(r, j)).sum();
                    assert!(
                        (got - want).abs() < 1e-9,
                        "order {order} ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_constant_acceleration_is_kept_and_noise_is_smoothed_by_the_amount_it_needs() {
        let n = 40;
        let w = Whittaker::new(n, ORDER).unwrap();
        let mut line: Vec<[f64; 2]> = (0..n)
            .map(|f| {
                let t = f as f64;
                [0.3 * t - 0.004 * t * t, -0.1 * t]
            })
            .collect();
        let before = line.clone();
        w.smooth(&mut line, None);
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
        let mut lambdas = Vec::new();
        for sigma in [0.02, 0.3] {
            let mut y = measured(&truth, sigma, &mut rng);
            let raw = rms(&y, &truth);
            lambdas.push(w.smooth(&mut y, None));
            let smoothed = rms(&y, &truth);
            assert!(smoothed < raw, "σ {sigma}: {smoothed} vs raw {raw}");
        }
        assert!(
            lambdas[1] > 10.0 * lambdas[0],
            "more noise, more smoothing: {lambdas:?}"
        );
        assert!(Whittaker::new(4, 3).is_none() && Whittaker::new(MAX_FRAMES + 1, 3).is_none());
        assert!(Whittaker::new(5, 3).is_some() && Whittaker::new(10, 4).is_none());
        assert!(Whittaker::new(10, 1).is_none());
        let (a, b) = (
            Whittaker::for_frames(n, ORDER).unwrap(),
            Whittaker::for_frames(n, ORDER).unwrap(),
        );
        assert!(Arc::ptr_eq(&a, &b), "made once per frame count");
    }

    /// Why the estimator gives the smoother its measured noise: a fast start with a random walk
    /// of jitter on top (0.08 px per frame), measured with 0.01 px of noise. Given the noise,
    /// `C_p` keeps the jitter; REML, which must infer the noise from the same data, takes
    /// much of the jitter for noise and smooths it away.
    #[test]
    fn given_the_noise_a_random_walk_of_jitter_is_kept() {
        let n = 40;
        let w = Whittaker::new(n, ORDER).unwrap();
        let mut rng = SplitMix64::new(8);
        let mut walk = [0.0f64; 2];
        let truth: Vec<[f64; 2]> = (0..n)
            .map(|f| {
                let t = f as f64 / (n - 1) as f64;
                walk[0] += 0.08 * rng.normal();
                walk[1] += 0.08 * rng.normal();
                let p = 12.0 * (1.0 - (-t / 0.15).exp());
                [0.8 * p + walk[0], -0.6 * p + walk[1]]
            })
            .collect();
        let sigma = 0.01;
        let y = measured(&truth, sigma, &mut rng);
        let (mut cp, mut reml) = (y.clone(), y.clone());
        w.smooth(&mut cp, Some(sigma * sigma));
        w.smooth(&mut reml, None);
        let (raw, cp, reml) = (rms(&y, &truth), rms(&cp, &truth), rms(&reml, &truth));
        eprintln!("raw {raw:.4}, C_p {cp:.4}, REML {reml:.4}");
        assert!(cp <= 1.05 * raw, "C_p {cp} vs raw {raw}");
        assert!(reml > 2.0 * cp, "REML {reml} vs C_p {cp}");
    }
}
