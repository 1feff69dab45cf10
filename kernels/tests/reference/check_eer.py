#!/usr/bin/env python3
"""Compares our EER renderer with an independent decoder on the same files.

For every DIR/<name>.eer and each DIR/<name>_x<U>.mrc beside it (our rendering of its raw
frames at upsampling U, one section per raw frame, written by the kernels' unit test), every
EER page is decoded by `imagecodecs.eer_decode` (the codec `tifffile` uses for EER) at the
same super-resolution and compared pixel for pixel (electron counts). Prints PASS or fails
naming the file, upsampling and frame.

Usage: check_eer.py DIR
"""
import glob
import os
import sys

import imagecodecs
import mrcfile
import numpy as np
import tifffile


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def main(d):
    checked = 0
    for eer in sorted(glob.glob(os.path.join(d, "*.eer"))):
        name = os.path.splitext(eer)[0]
        with tifffile.TiffFile(eer) as tf:
            pages = [p for p in tf.pages if p.compression in (65000, 65001, 65002)]
            if not pages:
                fail(f"{eer}: tifffile finds no EER page")
            for mrc in sorted(glob.glob(f"{name}_x*.mrc")):
                up = int(mrc.rsplit("_x", 1)[1].split(".")[0])
                level = {1: 0, 2: 1, 4: 2}[up]
                ours = mrcfile.read(mrc)
                if ours.ndim == 2:
                    ours = ours[None]
                if len(ours) != len(pages):
                    fail(f"{mrc}: {len(ours)} frames, the file has {len(pages)} EER pages")
                for i, page in enumerate(pages):
                    comp = page.compression
                    if comp == 65002:
                        skip = int(page.tags.valueof(65007, 7))
                        horz = int(page.tags.valueof(65008, 2))
                        vert = int(page.tags.valueof(65009, 2))
                    else:
                        skip, horz, vert = (8 if comp == 65000 else 7), 2, 2
                    tf.filehandle.seek(page.dataoffsets[0])
                    data = tf.filehandle.read(page.databytecounts[0])
                    shape = (page.imagelength * up, page.imagewidth * up)
                    ref = imagecodecs.eer_decode(data, shape, skip, horz, vert, superres=level)
                    ref = ref.view(np.uint8).astype(np.float32)
                    if ref.shape != ours[i].shape:
                        fail(f"{mrc} frame {i}: shape {ours[i].shape}, imagecodecs {ref.shape}")
                    bad = np.argwhere(ref != ours[i])
                    if len(bad):
                        y, x = bad[0]
                        fail(f"{mrc} frame {i}: {len(bad)} pixels differ, first at ({x}, {y}): "
                             f"ours {ours[i][y, x]}, imagecodecs {ref[y, x]}")
                    checked += 1
    if checked == 0:
        fail(f"no EER file with renderings in {d}")
    print(f"PASS: {checked} rendered frames equal imagecodecs {imagecodecs.__version__}'s EER decoder")


if __name__ == "__main__":
    main(sys.argv[1])
