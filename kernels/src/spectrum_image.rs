//! The power spectrum as a picture for people: what the status page shows beside a movie's
//! numbers, so an operator sees at a glance whether the fitted CTF follows the Thon rings.
//!
//! [`centred`] unfolds a half-complex [`Spectrum`] into an `n × n` image with the zero
//! frequency at `(n/2, n/2)`. [`spectrum_image`] turns that into 8-bit grey: the logarithm of
//! the power, smoothed over 3 × 3 pixels, flattened ring by ring (each integer radius's mean subtracted and its standard
//! deviation divided out, so the envelope's fall-off does not hide the high-resolution rings),
//! `±2.5σ` mapped onto 0..=254. The fitted CTF's zeros are drawn in white (255, a value the
//! spectrum itself never takes) on the right half only, from the first zero out to the fit
//! resolution, so the left half shows the rings untouched beside them (the same layout as
//! CTFFIND's diagnostic image).

use crate::ctf::Ctf;
use crate::ctf_fit::Spectrum;

/// Grey value of the drawn CTF zeros; the spectrum is mapped onto `0..RING`.
pub const RING: u8 = 255;

/// A centred `n × n` image of a half-complex power spectrum (Hermitian symmetry fills the
/// negative-x half): pixel `(x, y)` holds frequency `(x − n/2, y − n/2)`.
pub fn centred(s: &Spectrum) -> Vec<f32> {
    let n = s.n;
    let nxh = n / 2 + 1;
    let mut out = vec![0.0f32; n * n];
    for y in 0..n {
        let fy = y as i64 - (n / 2) as i64;
        for x in 0..n {
            let fx = x as i64 - (n / 2) as i64;
            let (i, j) = if fx >= 0 { (fx, fy) } else { (-fx, -fy) };
            let j = j.rem_euclid(n as i64) as usize;
            out[y * n + x] = s.data[j * nxh + i as usize];
        }
    }
    out
}

/// The 8-bit picture of a centred `n × n` spectrum (module docs) with the zeros of `ctf`
/// (its pixel size is the spectrum's) drawn up to `k_max` (1/Å, e.g. the reciprocal of the
/// fit resolution). Non-finite or non-positive power counts as the smallest positive value.
///
/// # Panics
/// If `image.len() != n * n`.
pub fn spectrum_image(image: &[f32], n: usize, ctf: &Ctf, k_max: f64) -> Vec<u8> {
    assert_eq!(image.len(), n * n, "spectrum_image: image length");
    let c = (n / 2) as f64;
    let radius = |x: usize, y: usize| ((x as f64 - c).hypot(y as f64 - c)).round() as usize;
    let smallest = image
        .iter()
        .copied()
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold(f32::INFINITY, f32::min);
    let floor = if smallest.is_finite() { smallest } else { 1.0 };
    let logs: Vec<f64> = image
        .iter()
        .map(|&v| f64::from(if v.is_finite() && v > 0.0 { v } else { floor }).ln())
        .collect();
    // A 3 × 3 box average takes the speckle of a spectrum averaged over few tiles off the
    // rings (they are several pixels apart wherever the fit reaches).
    let logs = box3(&logs, n);
    let rings = radius(0, 0) + 1;
    let mut sum = vec![0.0f64; rings];
    let mut sum2 = vec![0.0f64; rings];
    let mut count = vec![0u32; rings];
    for y in 0..n {
        for x in 0..n {
            let r = radius(x, y);
            let v = logs[y * n + x];
            sum[r] += v;
            sum2[r] += v * v;
            count[r] += 1;
        }
    }
    let stats: Vec<(f64, f64)> = (0..rings)
        .map(|r| {
            let k = f64::from(count[r].max(1));
            let mean = sum[r] / k;
            let var = (sum2[r] / k - mean * mean).max(0.0);
            (mean, var.sqrt())
        })
        .collect();
    let top = f64::from(RING - 1);
    let mut out: Vec<u8> = (0..n * n)
        .map(|i| {
            let (mean, std) = stats[radius(i % n, i / n)];
            let z = if std > 1e-12 {
                (logs[i] - mean) / std
            } else {
                0.0
            };
            (top / 2.0 + z * top / 5.0).round().clamp(0.0, top) as u8
        })
        .collect();
    draw_zeros(&mut out, n, ctf, k_max);
    out
}

/// The mean of each pixel's 3 × 3 neighbourhood (the part inside the image at the edges).
fn box3(v: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    for y in 0..n {
        for x in 0..n {
            let (mut sum, mut k) = (0.0, 0.0);
            for yy in y.saturating_sub(1)..(y + 2).min(n) {
                for xx in x.saturating_sub(1)..(x + 2).min(n) {
                    sum += v[yy * n + xx];
                    k += 1.0;
                }
            }
            out[y * n + x] = sum / k;
        }
    }
    out
}

/// Marks the zeros of `ctf` up to `k_max` on the right half (`x > n/2`) of `out`.
fn draw_zeros(out: &mut [u8], n: usize, ctf: &Ctf, k_max: f64) {
    let c = (n / 2) as f64;
    // Pixels per 1/Å: frequency k sits at radius k·n·p.
    let scale = n as f64 * ctf.pixel_size_a;
    let k_max = k_max.min(0.5 / ctf.pixel_size_a);
    if !(k_max.is_finite() && k_max > 0.0 && scale > 0.0) {
        return;
    }
    // Enough angles that neighbouring points of the outermost ring touch.
    let steps = ((std::f64::consts::PI * c * 2.0).ceil() as usize).max(8);
    for zero in 1..=512u32 {
        let mut any = false;
        for s in 0..=steps {
            let theta =
                -std::f64::consts::FRAC_PI_2 + std::f64::consts::PI * s as f64 / steps as f64;
            let Some(k) = ctf.zero_k(ctf.defocus_a_at(theta), zero) else {
                continue;
            };
            if k > k_max {
                continue;
            }
            any = true;
            let x = (c + k * scale * theta.cos()).round();
            let y = (c + k * scale * theta.sin()).round();
            if x > c && x < n as f64 && y >= 0.0 && y < n as f64 {
                out[y as usize * n + x as usize] = RING;
            }
        }
        if !any {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctf::ctf_2d;

    fn astigmatic() -> Ctf {
        Ctf {
            voltage_kv: 300.0,
            cs_mm: 2.7,
            amplitude_contrast: 0.07,
            pixel_size_a: 1.0,
            defocus_u_um: 1.6,
            defocus_v_um: 1.2,
            astig_angle_deg: 30.0,
            phase_shift_pi: 0.0,
        }
    }

    #[test]
    fn the_rings_drawn_lie_on_the_zeros_of_the_ctf_and_only_on_the_right_half() {
        let n = 512;
        let ctf = astigmatic();
        // A spectrum that is the CTF's square over a falling background.
        let grid = ctf_2d(&ctf, n, n);
        let nxh = n / 2 + 1;
        let data: Vec<f32> = grid
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (x, y) = ((i % nxh) as f32, (i / nxh) as f32);
                let y = y.min(n as f32 - y);
                (v * v + 0.02) * (-(x * x + y * y) / 8000.0).exp()
            })
            .collect();
        let spectrum = Spectrum { n, data, tiles: 1 };
        let img = centred(&spectrum);
        // Rings at most 1/8 Å⁻¹ out are several pixels apart, so a pixel's rounding moves a
        // drawn point off its zero by a small part of a ring period.
        let k_max = 1.0 / 8.0;
        let pic = spectrum_image(&img, n, &ctf, k_max);
        let c = (n / 2) as f64;
        let mut marked = 0;
        let mut off = 0.0;
        // The same pixels judged against the CTF turned by 90°: a wrong orientation shows.
        let mut turned = Ctf {
            astig_angle_deg: ctf.astig_angle_deg + 90.0,
            ..ctf
        };
        turned.phase_shift_pi = 0.0;
        let mut off_turned = 0.0;
        for y in 0..n {
            for x in 0..n {
                if pic[y * n + x] != RING {
                    continue;
                }
                assert!(x > n / 2, "a ring pixel on the left half at ({x}, {y})");
                let kx = (x as f64 - c) / n as f64;
                let ky = (y as f64 - c) / n as f64;
                assert!(kx.hypot(ky) <= k_max + 1.0 / n as f64, "ring beyond k_max");
                off += ctf.ctf_at(kx, ky).abs();
                off_turned += turned.ctf_at(kx, ky).abs();
                marked += 1;
            }
        }
        assert!(marked > 300, "only {marked} ring pixels");
        let mean = off / marked as f64;
        // |CTF| averages 2/π ≈ 0.64 over a ring period; on the zeros (to a pixel) it is small.
        assert!(mean < 0.15, "mean |CTF| on the drawn rings {mean}");
        let wrong = off_turned / marked as f64;
        assert!(wrong > 2.0 * mean, "turned CTF {wrong} vs {mean}");
        // The spectrum itself is dark on the zeros and bright on the maxima (left half).
        let mut dark = (0.0, 0);
        let mut bright = (0.0, 0);
        for y in 0..n {
            for x in 1..n / 2 {
                let kx = (x as f64 - c) / n as f64;
                let ky = (y as f64 - c) / n as f64;
                let k = kx.hypot(ky);
                if !(0.05..0.15).contains(&k) {
                    continue;
                }
                let v = ctf.ctf_at(kx, ky).abs();
                let p = f64::from(pic[y * n + x]);
                if v < 0.1 {
                    dark = (dark.0 + p, dark.1 + 1);
                } else if v > 0.9 {
                    bright = (bright.0 + p, bright.1 + 1);
                }
            }
        }
        let (dark, bright) = (dark.0 / dark.1 as f64, bright.0 / bright.1 as f64);
        assert!(bright > dark + 60.0, "maxima {bright} vs zeros {dark}");
    }

    #[test]
    fn a_flat_or_broken_spectrum_gives_mid_grey_and_no_panic() {
        let n = 64;
        let ctf = astigmatic();
        let pic = spectrum_image(&vec![1.0; n * n], n, &ctf, 0.0);
        assert!(pic.iter().all(|&p| p == 127), "flat spectrum, no rings");
        let mut broken = vec![f32::NAN; n * n];
        broken[5] = -1.0;
        let pic = spectrum_image(&broken, n, &ctf, f64::NAN);
        assert_eq!(pic.len(), n * n);
    }
}
