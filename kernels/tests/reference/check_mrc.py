#!/usr/bin/env python3
"""Cross-check warp-kernels' MRC reader/writer against mrcfile, the field's reference reader.

  check_mrc.py check-ours DIR     verify the files `mrc_roundtrip write DIR` made
  check_mrc.py write-ref DIR      have mrcfile write modes 0, 1, 2, 6, 12 (+ a big-endian file)
  check_mrc.py check-read DIR     compare `mrc_roundtrip read DIR` JSON (stdin) with DIR's files

Exits non-zero on any mismatch.
"""
import json
import os
import sys
import warnings

import mrcfile
import numpy as np

FAILS = []


def fail(msg):
    FAILS.append(msg)
    print("MISMATCH: " + msg, file=sys.stderr)


def ramp(n):
    i = np.arange(n)
    return ((i * 37 % 101).astype(np.float32) - np.float32(50)) / np.float32(7)


def int_ramp(n):
    i = np.arange(n)
    return (i * 37 % 101) * 13 - 600


def voxel_ok(got, want):
    # cella is stored as float32(n * v); mrcfile divides by n in float32: allow that rounding.
    return all(np.isclose(float(g), want, rtol=2e-7, atol=0) for g in got)


def check_ours(d):
    expect = {
        "f32.mrc": (2, (3, 5, 7), 1.25, ramp(105).reshape(3, 5, 7)),
        "f16.mrc": (12, (4, 6), 0.8, ramp(24).reshape(4, 6)),
        "i16.mrc": (1, (2, 3, 9), 2.5, int_ramp(54).reshape(2, 3, 9)),
    }
    for name, (mode, shape, voxel, want) in expect.items():
        path = os.path.join(d, name)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any header complaint from mrcfile is a failure
            with mrcfile.open(path, permissive=False) as m:
                h = m.header
                if int(h.mode) != mode:
                    fail(f"{name}: mode {int(h.mode)} != {mode}")
                if m.data.shape != shape:
                    fail(f"{name}: shape {m.data.shape} != {shape}")
                vs = m.voxel_size
                if not voxel_ok((vs.x, vs.y, vs.z), voxel):
                    fail(f"{name}: voxel size {vs} != {voxel}")
                data = np.asarray(m.data)
                if mode == 12:
                    exact = want.astype(np.float16)  # numpy rounds to nearest even
                    if not np.array_equal(data, exact):
                        fail(f"{name}: float16 data differ from numpy's rounding")
                    rel = np.abs(data.astype(np.float64) - want) / np.maximum(np.abs(want), 6.1e-5)
                    if rel.max() > 2.0 ** -11:
                        fail(f"{name}: float16 error {rel.max()} beyond half precision")
                elif not np.array_equal(data.astype(np.float64), want.astype(np.float64)):
                    fail(f"{name}: data differ")
                stored = data.astype(np.float64)
                for field, value in (("dmin", stored.min()), ("dmax", stored.max()),
                                     ("dmean", stored.mean()), ("rms", stored.std())):
                    if not np.isclose(float(getattr(h, field)), value, rtol=1e-6, atol=1e-6):
                        fail(f"{name}: header {field} {float(getattr(h, field))} != {value}")
                if int(h.ispg) != (0 if len(shape) == 2 else 1):
                    fail(f"{name}: ispg {int(h.ispg)}")
                if int(h.nversion) != 20140 or bytes(h.map) != b"MAP " or bytes(h.machst[:2]) != b"DD":
                    fail(f"{name}: nversion/map/machst wrong")
        if not mrcfile.validate(path, print_file=open(os.devnull, "w")):
            fail(f"{name}: mrcfile.validate() failed")
    print(f"mrcfile read {len(expect)} warp-kernels files", file=sys.stderr)


def ref_files():
    """name -> (data, voxel size, big endian)."""
    rng = np.random.default_rng(12345)
    return {
        "m0_int8.mrc": (rng.integers(-128, 128, (3, 4, 5)).astype(np.int8), 1.5, False),
        "m1_int16.mrc": (rng.integers(-32768, 32768, (2, 5, 7)).astype(np.int16), 0.75, False),
        "m2_float32.mrc": ((rng.standard_normal((4, 3, 6)) * 100).astype(np.float32), 1.05, False),
        "m2_image.mrc": (rng.standard_normal((5, 9)).astype(np.float32), 3.0, False),
        "m6_uint16.mrc": (rng.integers(0, 65536, (2, 3, 11)).astype(np.uint16), 2.0, False),
        "m12_float16.mrc": ((rng.standard_normal((3, 7, 5)) * 1000).astype(np.float16), 0.5, False),
        "m2_bigendian.mrc": ((rng.standard_normal((2, 3, 4)) * 10).astype(">f4"), 1.25, True),
        "m1_bigendian.mrc": (rng.integers(-32768, 32768, (3, 3)).astype(">i2"), 4.0, True),
    }


def write_ref(d):
    for name, (data, voxel, _) in ref_files().items():
        with mrcfile.new(os.path.join(d, name), overwrite=True) as m:
            m.set_data(data)
            m.voxel_size = voxel
    print(f"mrcfile wrote {len(ref_files())} files", file=sys.stderr)


def check_read(d):
    files = ref_files()
    seen = set()
    for line in sys.stdin:
        r = json.loads(line)
        name = r["file"]
        seen.add(name)
        data, _, big = files[name]
        with mrcfile.open(os.path.join(d, name)) as m:
            ref = np.asarray(m.data)
            mode = int(m.header.mode)
            vs = m.voxel_size
            ref_voxel = [float(vs.x), float(vs.y), float(vs.z)]
            if bytes(m.header.machst[:2]) != (b"\x11\x11" if big else b"DD"):
                fail(f"{name}: test setup: unexpected machine stamp {bytes(m.header.machst)}")
        nz, ny, nx = (1,) * (3 - ref.ndim) + ref.shape
        if r["mode"] != mode:
            fail(f"{name}: mode {r['mode']} != {mode}")
        if r["shape"] != [nz, ny, nx]:
            fail(f"{name}: shape {r['shape']} != {[nz, ny, nx]}")
        if r["voxel_size"] != ref_voxel:
            fail(f"{name}: voxel size {r['voxel_size']} != {ref_voxel}")
        if r["big_endian"] != big:
            fail(f"{name}: big_endian {r['big_endian']} != {big}")
        ours = np.array(r["data"], dtype=np.float64)
        want = ref.astype(np.float64).ravel()
        if not np.array_equal(np.float32(ours), np.float32(want)) or not np.array_equal(
            data.astype(np.float64).ravel(), want
        ):
            fail(f"{name}: data differ")
        if not np.isclose(r["sum"], want.sum(), rtol=1e-12, atol=1e-9):
            fail(f"{name}: sum {r['sum']} != {want.sum()}")
    missing = set(files) - seen
    if missing:
        fail(f"not read by the example: {sorted(missing)}")
    print(f"warp-kernels read {len(seen)} mrcfile files", file=sys.stderr)


def main():
    cmd, d = sys.argv[1], sys.argv[2]
    {"check-ours": check_ours, "write-ref": write_ref, "check-read": check_read}[cmd](d)
    if FAILS:
        print(f"FAIL: {len(FAILS)} mismatch(es) in {cmd}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
