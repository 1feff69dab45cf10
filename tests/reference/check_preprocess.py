#!/usr/bin/env python3
"""Checks a `warp-controller preprocess` output directory with the field's reference readers.

Usage: check_preprocess.py OUT_DIR [--float16] [--odd-even]

* every `<name>.json` listed in processed_items.json: its average (and odd/even halves) opens in
  `mrcfile` with mode 2 (12 with --float16), shape (height, width) and voxel size = angpix; its
  power spectrum is a square float32 image;
* `micrographs_ctf.star` reads in `starfile` with RELION's columns, one row per processed movie,
  defocus in Å equal to the JSON's µm × 10⁴.
Prints one PASS line; exits non-zero with the reason otherwise.
"""
import json
import math
import os
import sys

import mrcfile
import starfile


def fail(msg):
    print(f"FAIL check_preprocess: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    out = sys.argv[1]
    float16 = "--float16" in sys.argv
    odd_even = "--odd-even" in sys.argv
    mode = 12 if float16 else 2
    items = json.load(open(os.path.join(out, "processed_items.json")))["items"]
    if not items:
        fail("processed_items.json lists nothing")
    records = {}
    for it in items:
        rec = json.load(open(os.path.join(out, it["name"] + ".json")))
        records[it["name"]] = rec
        files = [rec["outputs"]["average"]]
        if odd_even:
            files += [rec["outputs"]["odd"], rec["outputs"]["even"]]
        for rel in files:
            with mrcfile.open(os.path.join(out, rel), permissive=False) as m:
                if int(m.header.mode) != mode:
                    fail(f"{rel}: mode {int(m.header.mode)}, expected {mode}")
                if m.data.shape != (rec["height"], rec["width"]):
                    fail(f"{rel}: shape {m.data.shape}, expected {(rec['height'], rec['width'])}")
                if not math.isclose(float(m.voxel_size.x), rec["angpix"], rel_tol=1e-5):
                    fail(f"{rel}: voxel size {m.voxel_size.x}, expected {rec['angpix']}")
                if not math.isfinite(float(m.data.astype("float64").std())) or m.data.std() == 0:
                    fail(f"{rel}: data is constant or not finite")
        ps = os.path.join(out, rec["outputs"]["powerspectrum"])
        with mrcfile.open(ps, permissive=False) as m:
            if int(m.header.mode) != 2 or m.data.shape[0] != m.data.shape[1]:
                fail(f"{ps}: mode {int(m.header.mode)} shape {m.data.shape}")
    star = starfile.read(os.path.join(out, "micrographs_ctf.star"))
    if isinstance(star, dict):
        star = star.get("micrographs")
    want = ["rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
            "rlnCtfMaxResolution", "rlnCtfFigureOfMerit", "rlnVoltage",
            "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMicrographPixelSize"]
    if list(star.columns) != want:
        fail(f"STAR columns {list(star.columns)}")
    if len(star) != len(records):
        fail(f"STAR has {len(star)} rows for {len(records)} processed movies")
    for _, row in star.iterrows():
        name = os.path.splitext(os.path.basename(row["rlnMicrographName"]))[0]
        rec = records.get(name)
        if rec is None:
            fail(f"STAR row {row['rlnMicrographName']} has no record")
        for col, key in [("rlnDefocusU", "defocus_u_um"), ("rlnDefocusV", "defocus_v_um")]:
            if not math.isclose(row[col], rec["ctf"][key] * 1e4, rel_tol=1e-5):
                fail(f"{name}: {col} {row[col]} vs {rec['ctf'][key]} µm")
        if not math.isclose(row["rlnMicrographPixelSize"], rec["angpix"], rel_tol=1e-6):
            fail(f"{name}: pixel size {row['rlnMicrographPixelSize']}")
    print(f"PASS check_preprocess: mrcfile {mrcfile.__version__} read {len(records)} averages"
          f"{' with odd/even halves' if odd_even else ''} and power spectra; starfile "
          f"{getattr(starfile, '__version__', '')} read {len(star)} micrograph rows matching the JSON records")


if __name__ == "__main__":
    main()
