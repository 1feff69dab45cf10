//! Exposure (dose) weighting after Grant & Grigorieff (2015), DESIGN.md §6.
//!
//! T. Grant and N. Grigorieff, "Measuring the optimal exposure for single particle cryo-EM
//! using a 2.6 Å reconstruction of rotavirus VP6", eLife 4:e06980 (2015). They fit the
//! *critical exposure* — the cumulative exposure at which the amplitude at spatial frequency
//! `k` has fallen to 1/e — as `Nₑ(k) = 0.245·k^−1.665 + 2.81` e⁻/Å² (k in Å⁻¹) at 300 kV, and
//! scale it by 0.8 at 200 kV. The amplitude after cumulative exposure `N` is `exp(−N/(2Nₑ))`.
//!
//! **Other voltages** (this crate's choice, not the paper's): the scale is interpolated
//! linearly in kV between 200 kV (0.8) and 300 kV (1.0) and clamped outside that range, i.e.
//! `0.8` below 200 kV and `1.0` above 300 kV; the paper calibrates only those two voltages.
//!
//! **Frame exposure.** Frame `f` (0-based) with `D` e⁻/Å² per frame is taken to have received
//! the cumulative exposure at its midpoint, `N_f = (f + ½)·D`, the average exposure of the
//! specimen during the frame.
//!
//! **Normalisation.** With raw amplitudes `a_f = exp(−N_f/(2Nₑ))`, the weights are
//! `w_f(k) = a_f(k)·√(n / Σ_g a_g(k)²)`, so `Σ_f w_f(k)² = n` at every `k`. This is the paper's
//! optimal (SNR-maximising) weighting, proportional to the signal amplitude in each frame and
//! normalised by the root sum of squares (their eq. 9), times `√n` so that where nothing
//! has decayed (`k → 0`) every weight is 1 and the weighted sum equals the plain frame sum; the
//! noise power of the weighted sum is that of the plain sum at every frequency. Tables over
//! the FFT grid are built by `movie::WeightTable` (radial bins).

/// Voltage scale of the critical exposure: 1.0 at 300 kV, 0.8 at 200 kV, linear between and
/// clamped outside (see the module docs).
pub fn voltage_scale(kv: f64) -> f64 {
    let t = ((kv - 200.0) / 100.0).clamp(0.0, 1.0);
    0.8 + 0.2 * t
}

/// Critical exposure `Nₑ(k)` in e⁻/Å² at spatial frequency `k` (1/Å) and voltage `kv`:
/// `(0.245·k^−1.665 + 2.81)·voltage_scale(kv)`. Infinite at `k = 0`.
pub fn critical_exposure(k: f64, kv: f64) -> f64 {
    (0.245 * k.abs().powf(-1.665) + 2.81) * voltage_scale(kv)
}

/// Weights of `n_frames` frames at spatial frequency `k` (1/Å), `dose_per_frame` e⁻/Å² each,
/// at `kv` kV: `w_f = a_f·√(n/Σ a_g²)` with `a_f = exp(−(f+½)·D/(2Nₑ(k)))` (module docs).
///
/// Computed relative to the first frame, so nothing overflows or divides by zero at high `k`
/// where the later frames' amplitudes underflow to 0.
pub fn frame_weights(k: f64, dose_per_frame: f64, n_frames: usize, kv: f64) -> Vec<f32> {
    let ne = critical_exposure(k, kv);
    weights_for(ne, dose_per_frame, n_frames)
}

/// [`frame_weights`] for a given critical exposure `ne`.
fn weights_for(ne: f64, dose_per_frame: f64, n_frames: usize) -> Vec<f32> {
    // a_f / a_0 = exp(−f·D/(2Nₑ)); Σ (a_g/a_0)² ≥ 1, so the division is safe.
    let rel: Vec<f64> = (0..n_frames)
        .map(|f| (-(f as f64) * dose_per_frame / (2.0 * ne)).exp())
        .collect();
    let ss: f64 = rel.iter().map(|r| r * r).sum();
    let norm = (n_frames as f64 / ss).sqrt();
    rel.iter().map(|r| (r * norm) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_exposure_known_values() {
        // k = 1/Å: 0.245 + 2.81.
        assert!((critical_exposure(1.0, 300.0) - 3.055).abs() < 1e-12);
        assert!((critical_exposure(1.0, 200.0) - 0.8 * 3.055).abs() < 1e-12);
        assert!((critical_exposure(1.0, 250.0) - 0.9 * 3.055).abs() < 1e-12);
        assert!((critical_exposure(1.0, 120.0) - 0.8 * 3.055).abs() < 1e-12);
        // k = 0.1/Å: 0.245·10^1.665 + 2.81 ≈ 14.138.
        assert!((critical_exposure(0.1, 300.0) - 14.138).abs() < 2e-3);
        assert!(critical_exposure(0.0, 300.0).is_infinite());
        // Decreasing in k: high frequencies die first.
        let mut last = f64::INFINITY;
        for i in 1..100 {
            let ne = critical_exposure(i as f64 * 0.01, 300.0);
            assert!(ne < last);
            last = ne;
        }
    }

    #[test]
    fn weights_normalised_and_monotone() {
        let n = 40;
        for &k in &[0.0, 0.02, 0.1, 0.3, 0.5, 2.0] {
            let w = frame_weights(k, 1.2, n, 300.0);
            assert_eq!(w.len(), n);
            let ss: f64 = w.iter().map(|&v| (v as f64).powi(2)).sum();
            assert!((ss - n as f64).abs() < 1e-3 * n as f64, "k {k}: {ss}");
            assert!(w.windows(2).all(|p| p[1] <= p[0]), "k {k}");
            assert!(w.iter().all(|v| v.is_finite() && *v >= 0.0));
        }
        // DC: all ones.
        assert!(
            frame_weights(0.0, 1.2, n, 300.0)
                .iter()
                .all(|&v| (v - 1.0).abs() < 1e-6)
        );
        // The first frame gains and the last loses weight as k increases.
        let lo = frame_weights(0.05, 1.2, n, 300.0);
        let hi = frame_weights(0.3, 1.2, n, 300.0);
        assert!(hi[0] > lo[0] && hi[n - 1] < lo[n - 1]);
        // 200 kV damages faster (smaller Nₑ): the first frame weighs more.
        let hi200 = frame_weights(0.3, 1.2, n, 200.0);
        assert!(hi200[0] > hi[0]);
    }

    #[test]
    fn weights_follow_exponential_decay() {
        // Ratio of consecutive frames is exp(−D/(2Nₑ)).
        let (k, d) = (0.2, 1.5);
        let ne = critical_exposure(k, 300.0);
        let w = frame_weights(k, d, 10, 300.0);
        for f in 1..10 {
            let r = w[f] as f64 / w[f - 1] as f64;
            assert!((r - (-d / (2.0 * ne)).exp()).abs() < 1e-5);
        }
        // Single frame: weight 1 whatever k.
        assert_eq!(frame_weights(0.4, 3.0, 1, 300.0), vec![1.0]);
    }
}
