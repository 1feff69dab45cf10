use super::*;
use crate::io::mrc::{WriteMode, write_mrc};
use crate::sim::SplitMix64;
use crate::test_util::TempDir;

/// Random electrons at distinct pixels: `per_mille` of them occupied, with random codes.
fn electrons(
    rng: &mut SplitMix64,
    width: usize,
    height: usize,
    per_mille: u64,
    s: EerScheme,
) -> Vec<Electron> {
    let mut v = Vec::new();
    for y in 0..height {
        for x in 0..width {
            if rng.next_u64() % 1000 < per_mille {
                v.push(Electron {
                    x: x as u32,
                    y: y as u32,
                    sub_x: (rng.next_u64() % (1 << s.horz_bits)) as u8,
                    sub_y: (rng.next_u64() % (1 << s.vert_bits)) as u8,
                });
            }
        }
    }
    v
}

/// The schemes the format has: the two fixed ones and the tagged one at two widths.
fn schemes() -> Vec<(u16, EerScheme)> {
    let s = |skip_bits, horz_bits, vert_bits| EerScheme {
        skip_bits,
        horz_bits,
        vert_bits,
    };
    vec![
        (65000, s(8, 2, 2)),
        (65001, s(7, 2, 2)),
        (65002, s(7, 2, 2)),
        (65002, s(9, 1, 1)),
    ]
}

#[test]
fn every_scheme_gives_back_the_electrons_written_exactly() {
    let dir = TempDir::new("eer-exact");
    let mut rng = SplitMix64::new(0x9e37_79b9_7f4a_7c15);
    for (k, (comp, s)) in schemes().into_iter().enumerate() {
        for (w, h, raw) in [(64, 48, 5), (100, 30, 3), (37, 53, 1)] {
            // Sparse frames (skips longer than the largest code), dense ones, an empty one.
            let frames: Vec<Vec<Electron>> = (0..raw)
                .map(|i| match i % 3 {
                    0 => electrons(&mut rng, w, h, 3, s),
                    1 => electrons(&mut rng, w, h, 400, s),
                    _ => Vec::new(),
                })
                .collect();
            let p = dir.join(&format!("m{k}_{w}x{h}.eer"));
            write_eer(&p, &frames, w, h, comp, s, k % 2 == 1).unwrap();
            let r = EerReader::open(&p, EerOptions::default()).unwrap();
            assert_eq!(
                (r.width(), r.height(), r.raw_frames(), r.scheme()),
                (w, h, raw, s)
            );
            for (i, f) in frames.iter().enumerate() {
                assert_eq!(
                    &r.electrons(i).unwrap(),
                    f,
                    "{comp} {s:?} {w}x{h} frame {i}"
                );
            }
        }
    }
}

#[test]
fn fractions_sum_their_raw_frames_at_every_upsampling() {
    let dir = TempDir::new("eer-groups");
    let mut rng = SplitMix64::new(7);
    let s = EerScheme {
        skip_bits: 7,
        horz_bits: 2,
        vert_bits: 2,
    };
    let (w, h) = (40, 24);
    let frames: Vec<Vec<Electron>> = (0..7).map(|_| electrons(&mut rng, w, h, 200, s)).collect();
    let p = dir.join("g.eer");
    write_eer(&p, &frames, w, h, 65001, s, false).unwrap();
    for up in [1, 2, 4] {
        let mut r = EerReader::open(
            &p,
            EerOptions {
                upsample: up,
                group: 3,
            },
        )
        .unwrap();
        assert_eq!(
            (r.frames(), r.width(), r.height()),
            (2, w * up, h * up),
            "7 raw frames, groups of 3"
        );
        for i in 0..2 {
            let mut want = vec![0f32; w * up * h * up];
            for f in &frames[3 * i..3 * i + 3] {
                render(f, w, up, s, &mut want);
            }
            let got = r.read_frame(i).unwrap();
            assert_eq!(got, want);
            let total: usize = frames[3 * i..3 * i + 3].iter().map(Vec::len).sum();
            assert_eq!(
                got.iter().sum::<f32>() as usize,
                total,
                "every electron counted once"
            );
        }
    }
    // At 4×, an electron's code picks its sub-pixel: code ^ 2 in each direction.
    let one = [Electron {
        x: 3,
        y: 1,
        sub_x: 1,
        sub_y: 2,
    }];
    // A 4 × 2 frame rendered 16 × 8: x = 3·4 + (1 ^ 2) = 15, y = 1·4 + (2 ^ 2) = 4.
    let mut f = vec![0f32; 16 * 8];
    render(&one, 4, 4, s, &mut f);
    assert_eq!(f.iter().position(|&v| v == 1.0), Some(4 * 16 + 15));
}

#[test]
fn damaged_or_unsupported_files_are_refused_with_the_reason() {
    let dir = TempDir::new("eer-bad");
    let s = EerScheme {
        skip_bits: 9,
        horz_bits: 1,
        vert_bits: 1,
    };
    let p = dir.join("one-bit.eer");
    write_eer(&p, &[Vec::new(), Vec::new()], 8, 8, 65002, s, false).unwrap();
    let e = EerReader::open(
        &p,
        EerOptions {
            upsample: 4,
            group: 1,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("sub-pixel bits"), "{e}");
    let e = EerReader::open(
        &p,
        EerOptions {
            upsample: 1,
            group: 3,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("fewer than one group"), "{e}");

    // A strip cut short: the file ends before it does.
    let bytes = std::fs::read(&p).unwrap();
    let cut = dir.join("cut.eer");
    std::fs::write(&cut, &bytes[..bytes.len() - 40]).unwrap();
    let e = EerReader::open(&cut, EerOptions::default()).unwrap_err();
    assert!(e.to_string().contains("cut.eer"), "{e}");

    // A stream whose skips run past the frame.
    let mut data = Vec::new();
    put_all(&mut data, &[(100, 7), (0, 4)]);
    let mut out = Vec::new();
    let e = decode_frame(
        &data,
        8,
        8,
        EerScheme {
            skip_bits: 7,
            horz_bits: 2,
            vert_bits: 2,
        },
        &mut out,
    );
    assert!(e.unwrap_err().contains("past the last"));

    // A directory whose next-directory offset points back at itself.
    let mut looped = std::fs::read(&p).unwrap();
    let first = u32::from_le_bytes(looped[4..8].try_into().unwrap()) as usize;
    let n = u16::from_le_bytes([looped[first], looped[first + 1]]) as usize;
    let link = first + 2 + 12 * n;
    looped[link..link + 4].copy_from_slice(&(first as u32).to_le_bytes());
    std::fs::write(dir.join("loop.eer"), &looped).unwrap();
    let e = EerReader::open(dir.join("loop.eer"), EerOptions::default()).unwrap_err();
    assert!(e.to_string().contains("loops back"), "{e}");

    std::fs::write(dir.join("junk.eer"), b"not a tiff at all").unwrap();
    assert!(EerReader::open(dir.join("junk.eer"), EerOptions::default()).is_err());
}

fn put_all(out: &mut Vec<u8>, fields: &[(u32, u32)]) {
    let mut bits = Vec::new();
    for &(v, n) in fields {
        put(&mut bits, v, n);
    }
    while bits.len() % 16 != 0 {
        bits.push(false);
    }
    out.extend(bits.chunks(8).map(|c| {
        c.iter()
            .enumerate()
            .map(|(i, &b)| u8::from(b) << i)
            .sum::<u8>()
    }));
}

/// The rendered raw frames of every scheme, upsampling and size written as MRC stacks beside
/// the EER files, for `kernels/tests/reference/check_eer.py` to compare with the `imagecodecs`
/// decoder (via `tifffile`) on the same files. Skipped without python3/imagecodecs unless
/// `WARP_REQUIRE_REFERENCE_READERS=1`.
#[test]
fn rendered_frames_equal_the_imagecodecs_decoder_on_the_same_files() {
    let have = std::process::Command::new("python3")
        .args(["-c", "import imagecodecs, tifffile, mrcfile"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have {
        assert!(
            std::env::var("WARP_REQUIRE_REFERENCE_READERS").as_deref() != Ok("1"),
            "imagecodecs/tifffile/mrcfile are required: pip install imagecodecs tifffile mrcfile"
        );
        eprintln!("SKIP: python3 with imagecodecs, tifffile and mrcfile not found");
        return;
    }
    let dir = TempDir::new("eer-reference");
    let mut rng = SplitMix64::new(42);
    for (k, (comp, s)) in schemes().into_iter().enumerate() {
        let (w, h) = (48 + 8 * k, 32);
        let frames: Vec<Vec<Electron>> = (0..3)
            .map(|i| electrons(&mut rng, w, h, [5, 300, 900][i], s))
            .collect();
        let name = format!("s{k}");
        write_eer(
            &dir.join(&format!("{name}.eer")),
            &frames,
            w,
            h,
            comp,
            s,
            k == 1,
        )
        .unwrap();
        for up in [1usize, 2, 4] {
            if up > 1 << s.horz_bits.min(s.vert_bits) {
                continue;
            }
            let mut r = EerReader::open(
                dir.join(&format!("{name}.eer")),
                EerOptions {
                    upsample: up,
                    group: 1,
                },
            )
            .unwrap();
            let stack: Vec<f32> = (0..3).flat_map(|i| r.read_frame(i).unwrap()).collect();
            write_mrc(
                dir.join(&format!("{name}_x{up}.mrc")),
                &stack,
                w * up,
                h * up,
                3,
                WriteMode::Float32,
                1.0,
            )
            .unwrap();
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/check_eer.py");
    let o = std::process::Command::new("python3")
        .arg(&script)
        .arg(dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && text.contains("PASS"),
        "check_eer.py:\n{text}"
    );
}
