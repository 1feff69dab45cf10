//! Times EER decoding and grouping alone (no gain, no FFT): every fraction of a movie rendered
//! into one reused frame, on the calling thread, as `Movie::load`'s reader thread does. The
//! count of the rendered electrons, summed from the frames, is part of the time.
//!
//! cargo run --release -p warp-kernels --example eer_decode -- MOVIE.eer GROUP [UPSAMPLE]

use std::time::Instant;
use warp_kernels::io::eer::{EerOptions, EerReader};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: eer_decode MOVIE.eer GROUP [UPSAMPLE]");
        std::process::exit(2);
    }
    let group: usize = args[2].parse().expect("GROUP is a number");
    let upsample: usize = args
        .get(3)
        .map_or(1, |u| u.parse().expect("UPSAMPLE is 1, 2 or 4"));
    let mut r =
        EerReader::open(&args[1], EerOptions { upsample, group }).unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let (mut frame, mut electrons) = (Vec::new(), 0f64);
    for i in 0..r.frames() {
        r.read_frame_into(i, &mut frame)
            .unwrap_or_else(|e| panic!("{e}"));
        electrons += frame.iter().map(|&v| f64::from(v)).sum::<f64>();
    }
    let s = start.elapsed().as_secs_f64();
    println!(
        "{{\"raw_frames\": {}, \"fractions\": {}, \"upsample\": {upsample}, \"electrons\": {electrons}, \"seconds\": {s:.3}, \"ns_per_electron\": {:.2}}}",
        r.raw_frames(),
        r.frames(),
        s * 1e9 / electrons
    );
}
