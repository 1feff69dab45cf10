//! `warp-controller simulate`: write a synthetic dataset with known truth ([`crate::dataset`]).

use std::path::PathBuf;

use getopts::Options;

use crate::cli::{self, CliError, number, usage};
use crate::dataset::{SimFormat, SimulateOptions, simulate_dataset};

/// Parses and checks `args` (after `simulate`) into the dataset's options; `None` after
/// `--help`. Writes nothing.
pub fn from_args(args: &[String]) -> Result<Option<SimulateOptions>, CliError> {
    let d = SimulateOptions::default();
    let mut o = Options::new();
    o.optflag("h", "help", "print this help");
    o.optopt(
        "",
        "output",
        "directory for the movies and truth files (required)",
        "DIR",
    );
    o.optopt(
        "",
        "count",
        &format!("number of movies (default {})", d.count),
        "N",
    );
    o.optopt(
        "",
        "size",
        &format!("width = height in pixels, even, ≥ 64 (default {})", d.size),
        "PX",
    );
    o.optopt(
        "",
        "frames",
        &format!("frames per movie, ≥ 2 (default {})", d.frames),
        "F",
    );
    o.optopt(
        "",
        "angpix",
        &format!("pixel size in Å (default {})", d.angpix),
        "A",
    );
    o.optopt(
        "",
        "dose-per-frame",
        &format!(
            "dose per frame in e⁻/Å²; counts per pixel = dose × angpix² (default {})",
            d.dose_per_frame
        ),
        "D",
    );
    o.optopt(
        "",
        "voltage",
        &format!("acceleration voltage in kV (default {})", d.voltage_kv),
        "KV",
    );
    o.optopt(
        "",
        "cs",
        &format!("spherical aberration in mm (default {})", d.cs_mm),
        "MM",
    );
    o.optopt(
        "",
        "amp",
        &format!("amplitude contrast fraction (default {})", d.amp),
        "F",
    );
    o.optopt(
        "",
        "defocus-min",
        &format!(
            "smallest mean defocus in µm, underfocus positive (default {})",
            d.defocus_min_um
        ),
        "UM",
    );
    o.optopt(
        "",
        "defocus-max",
        &format!("largest mean defocus in µm (default {})", d.defocus_max_um),
        "UM",
    );
    o.optopt(
        "",
        "astig-max",
        &format!(
            "largest astigmatism U − V in µm, drawn in [0.1, max] (default {})",
            d.astig_max_um
        ),
        "UM",
    );
    o.optopt(
        "",
        "hard-path",
        "a hard trajectory instead of the smooth one: a fast start decelerating along a curve, plus a random walk of JITTER px per frame (e.g. 0.1)",
        "JITTER",
    );
    o.optopt(
        "",
        "max-shift",
        &format!("largest frame shift in pixels (default {})", d.max_shift_px),
        "PX",
    );
    o.optopt(
        "",
        "seed",
        &format!("dataset seed (default {})", d.seed),
        "S",
    );
    o.optflag(
        "",
        "float16",
        "store float16 (MRC mode 12) instead of int16 (mode 1)",
    );
    o.optopt(
        "",
        "eer-groups",
        "write EER movies (.eer) instead, each frame spread over N raw frames (read them with preprocess --eer-groups N)",
        "N",
    );
    o.optflag(
        "",
        "overwrite",
        "replace a simulated dataset already in --output",
    );
    let brief = "Usage: warp-controller simulate --output DIR [options]\n\n\
        Writes synthetic movies DIR/sim_0001.mrc ... (Poisson counts of a weak-phase specimen\n\
        under a known CTF and drift; see kernels/src/sim.rs) and beside each sim_0001.truth.json\n\
        with the shifts and CTF that went in. Each movie draws its mean defocus uniformly in\n\
        [--defocus-min, --defocus-max], its astigmatism in [0.1, --astig-max] and its angle in\n\
        [0, 180). Compare preprocessing results with: warp-controller compare --truth DIR --output OUT";
    let Some(m) = cli::parse_options_only(&o, args, brief)? else {
        return Ok(None);
    };
    let Some(output) = m.opt_str("output") else {
        return usage("simulate needs --output DIR; see --help");
    };
    let opts = SimulateOptions {
        output: PathBuf::from(output),
        count: number(&m, "count", d.count)?,
        size: number(&m, "size", d.size)?,
        frames: number(&m, "frames", d.frames)?,
        angpix: number(&m, "angpix", d.angpix)?,
        dose_per_frame: number(&m, "dose-per-frame", d.dose_per_frame)?,
        voltage_kv: number(&m, "voltage", d.voltage_kv)?,
        cs_mm: number(&m, "cs", d.cs_mm)?,
        amp: number(&m, "amp", d.amp)?,
        defocus_min_um: number(&m, "defocus-min", d.defocus_min_um)?,
        defocus_max_um: number(&m, "defocus-max", d.defocus_max_um)?,
        astig_max_um: number(&m, "astig-max", d.astig_max_um)?,
        max_shift_px: number(&m, "max-shift", d.max_shift_px)?,
        hard_path_jitter_px: match m.opt_str("hard-path") {
            None => None,
            Some(v) => match v.parse::<f64>() {
                Ok(j) if j.is_finite() && j >= 0.0 => Some(j),
                _ => return usage(format!("--hard-path: '{v}' is not a jitter ≥ 0 in pixels")),
            },
        },
        seed: number(&m, "seed", d.seed)?,
        format: match (m.opt_present("float16"), m.opt_str("eer-groups")) {
            (true, Some(_)) => return usage("--float16 and --eer-groups exclude each other"),
            (true, None) => SimFormat::Float16,
            (false, None) => SimFormat::Int16,
            (false, Some(_)) => SimFormat::Eer(number(&m, "eer-groups", 1)?),
        },
        overwrite: m.opt_present("overwrite"),
    };
    opts.validate().map_err(CliError::Usage)?;
    Ok(Some(opts))
}

/// Writes the dataset, a line per movie on stderr and a summary on stdout.
pub fn run(opts: SimulateOptions) -> Result<(), CliError> {
    let written = simulate_dataset(&opts, &mut |done, total, path| {
        eprintln!("simulated {done}/{total}: {}", path.display());
    })
    .map_err(CliError::Failed)?;
    println!(
        "wrote {} movie(s) of {}×{}×{} at {} Å/px, {} e⁻/Å² per frame, with truth files, to {}",
        written.len(),
        opts.size,
        opts.size,
        opts.frames,
        opts.angpix,
        opts.dose_per_frame,
        opts.output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_2() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for bad in [
            &["--bogus"][..],
            &[],
            &["--output", "x", "--size", "big"],
            &["--output", "x", "--size", "63"],
            &["--output", "x", "extra"],
        ] {
            let e = from_args(&args(bad)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e:?}");
        }
        assert!(from_args(&args(&["--help"])).unwrap().is_none());
        let e = super::super::compare::CompareConfig::from_args(&args(&["--truth", "x"]));
        assert_eq!(e.unwrap_err().exit_code(), 2);
        assert!(
            super::super::compare::CompareConfig::from_args(&args(&["-h"]))
                .unwrap()
                .is_none()
        );
    }
}
