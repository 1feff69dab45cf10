//! Cross-check of `warp_kernels::io::mrc` against a reference reader (driven by
//! `kernels/tests/reference/mrc-roundtrip.sh`).
//!
//! - `mrc_roundtrip write DIR`: writes `f32.mrc` (7×5×3, float32, 1.25 Å), `f16.mrc` (6×4×1,
//!   float16, 0.8 Å) and `i16.mrc` (9×3×2, int16, 2.5 Å) with the content `check_mrc.py` expects.
//! - `mrc_roundtrip read DIR`: reads every `*.mrc` in DIR and prints one JSON object per line:
//!   file, mode, shape `[nz, ny, nx]`, voxel size `[x, y, z]`, sum of the data and the data.

use std::process::ExitCode;

use warp_kernels::io::mrc::{MrcReader, WriteMode, write_mrc};

/// Values `((i * 37) % 101 - 50) / 7` computed in f32 (the Python side computes the same).
fn ramp(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
        .collect()
}

/// Integers `(i * 37) % 101 * 13 - 600`.
fn int_ramp(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 % 101) * 13) as f32 - 600.0)
        .collect()
}

fn write(dir: &str) -> Result<(), String> {
    let dir = std::path::Path::new(dir);
    let files = [
        (
            "f32.mrc",
            ramp(7 * 5 * 3),
            (7, 5, 3),
            WriteMode::Float32,
            1.25,
        ),
        ("f16.mrc", ramp(6 * 4), (6, 4, 1), WriteMode::Float16, 0.8),
        (
            "i16.mrc",
            int_ramp(9 * 3 * 2),
            (9, 3, 2),
            WriteMode::Int16,
            2.5,
        ),
    ];
    for (name, data, (nx, ny, nz), mode, voxel) in files {
        write_mrc(dir.join(name), &data, nx, ny, nz, mode, voxel).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn read(dir: &str) -> Result<(), String> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{dir}: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "mrc"))
        .collect();
    paths.sort();
    for p in paths {
        let mut r = MrcReader::open(&p).map_err(|e| e.to_string())?;
        let data = r.read_all().map_err(|e| e.to_string())?;
        let h = r.header();
        let sum: f64 = data.iter().map(|&v| f64::from(v)).sum();
        let line = serde_json::json!({
            "file": p.file_name().map(|n| n.to_string_lossy().into_owned()),
            "mode": h.mode.code(),
            "shape": [h.nz, h.ny, h.nx],
            "voxel_size": h.voxel_size_a,
            "exttyp": h.exttyp_str(),
            "big_endian": h.endian == warp_kernels::io::mrc::Endian::Big,
            "sum": sum,
            "data": data,
        });
        println!("{line}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1..).unwrap_or_default() {
        [cmd, dir] if cmd == "write" => write(dir),
        [cmd, dir] if cmd == "read" => read(dir),
        _ => Err("usage: mrc_roundtrip write DIR | mrc_roundtrip read DIR".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mrc_roundtrip: {e}");
            ExitCode::FAILURE
        }
    }
}
