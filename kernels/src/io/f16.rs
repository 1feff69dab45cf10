//! IEEE 754 binary16 ("half") conversion, written out so the crate needs no external crate.
//!
//! [`f32_to_f16`] rounds to nearest, ties to even, with overflow to infinity, gradual underflow
//! to subnormals and NaN kept a (quiet) NaN with its sign. [`f16_to_f32`] is exact: every binary16
//! value, subnormals included, is representable in binary32.

/// Converts an `f32` to the bit pattern of the nearest binary16 (round to nearest, ties to even).
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x007f_ffff;

    if exp == 0xff {
        if man == 0 {
            return sign | 0x7c00; // infinity
        }
        // NaN: keep the top payload bits and force quiet so it never becomes infinity.
        return sign | 0x7e00 | (man >> 13) as u16;
    }

    let e = exp - 127 + 15; // biased binary16 exponent
    if e >= 31 {
        return sign | 0x7c00; // too large: infinity
    }
    if e <= 0 {
        // Subnormal binary16 (or zero). Values below half the smallest subnormal round to zero.
        if e < -10 {
            return sign;
        }
        let m = man | 0x0080_0000; // implicit leading one (f32 subnormals fall in e < -10)
        let shift = (14 - e) as u32; // 14..=24
        let mut r = m >> shift;
        let rem = m & ((1u32 << shift) - 1);
        let half = 1u32 << (shift - 1);
        if rem > half || (rem == half && r & 1 == 1) {
            r += 1; // may carry into the smallest normal, which is the right answer
        }
        return sign | r as u16;
    }

    let mut h = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    if rem > 0x1000 || (rem == 0x1000 && h & 1 == 1) {
        h += 1; // a carry out of the mantissa bumps the exponent, up to infinity: correct
    }
    sign | h as u16
}

/// Converts a binary16 bit pattern to `f32` exactly.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x03ff);
    match exp {
        0 => {
            // Zero or subnormal: man * 2^-24, exact in f32.
            let v = man as f32 * (1.0 / 16_777_216.0);
            if sign != 0 { -v } else { v }
        }
        31 => f32::from_bits(sign | 0x7f80_0000 | (man << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_values() {
        assert_eq!(f32_to_f16(0.0), 0x0000);
        assert_eq!(f32_to_f16(-0.0), 0x8000);
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(-2.0), 0xc000);
        assert_eq!(f32_to_f16(65504.0), 0x7bff); // max finite
        assert_eq!(f32_to_f16(65519.99), 0x7bff); // just below the rounding midpoint
        assert_eq!(f32_to_f16(65520.0), 0x7c00); // midpoint, ties to even = infinity
        assert_eq!(f32_to_f16(1.0e6), 0x7c00);
        assert_eq!(f32_to_f16(f32::INFINITY), 0x7c00);
        assert_eq!(f32_to_f16(f32::NEG_INFINITY), 0xfc00);
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
        assert!(f16_to_f32(f32_to_f16(-f32::NAN)).is_nan());
        // NaN with a payload only in the low bits must stay NaN, not become infinity.
        let h = f32_to_f16(f32::from_bits(0x7f80_0001));
        assert_eq!(h & 0x7c00, 0x7c00);
        assert_ne!(h & 0x03ff, 0);
        // Smallest normal, largest subnormal, smallest subnormal.
        assert_eq!(f32_to_f16(6.103_515_6e-5), 0x0400);
        assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14));
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f32_to_f16(2f32.powi(-24)), 0x0001);
        // Half the smallest subnormal is a tie: rounds to even (zero); just above rounds up.
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0x0000);
        assert_eq!(
            f32_to_f16(f32::from_bits(2f32.powi(-25).to_bits() + 1)),
            0x0001
        );
        assert_eq!(f32_to_f16(-2f32.powi(-26)), 0x8000);
        assert_eq!(f32_to_f16(1.5 * 2f32.powi(-24)), 0x0002); // tie between 1 and 2: even
        assert_eq!(f32_to_f16(2.5 * 2f32.powi(-24)), 0x0002); // tie between 2 and 3: even
        // Largest subnormal rounding up into the smallest normal.
        assert_eq!(f32_to_f16(1023.5 * 2f32.powi(-24)), 0x0400);
        // Ties in the normal range: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        assert_eq!(f32_to_f16(f32::MIN_POSITIVE), 0x0000);
        assert_eq!(f32_to_f16(1.0e-40), 0x0000); // f32 subnormal
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn every_half_round_trips() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                assert_eq!(f32_to_f16(f) & 0x7c00, 0x7c00);
                assert_ne!(f32_to_f16(f) & 0x03ff, 0);
            } else {
                assert_eq!(f32_to_f16(f), h, "h = {h:#06x}");
            }
        }
    }

    /// Every f32 between two neighbouring halves goes to the nearer one (ties to even).
    #[test]
    fn rounds_to_nearest_even() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Exponents around the binary16 range, both signs.
            let exp = 100 + (state >> 40) as u32 % 46; // 2^-27 .. 2^18
            let bits =
                ((state as u32) & 0x8000_0000) | (exp << 23) | ((state >> 8) as u32 & 0x007f_ffff);
            let x = f32::from_bits(bits);
            let h = f32_to_f16(x);
            let got = f64::from(f16_to_f32(h));
            let xd = f64::from(x);
            if got.is_infinite() {
                assert!(xd.abs() >= 65520.0, "x = {x}");
                continue;
            }
            let err = (got - xd).abs();
            for n in [h.wrapping_sub(1), h.wrapping_add(1)] {
                if n & 0x7fff > 0x7bff || (n ^ h) & 0x8000 != 0 {
                    continue;
                }
                let other = (f64::from(f16_to_f32(n)) - xd).abs();
                assert!(
                    err <= other,
                    "x = {x:e}: chose {h:#06x}, {n:#06x} is nearer"
                );
                if err == other {
                    assert_eq!(h & 1, 0, "tie must go to even for x = {x:e}");
                }
            }
        }
    }
}
