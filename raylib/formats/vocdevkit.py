"""A standard Pascal VOC download (VOCdevkit/VOC2007 + VOCdevkit/VOC2012) -> the one merged root that
`data=voc` reads: JPEGImages/, Annotations/, ImageSets/Main/{trainval,test}_{year}.txt.

Images and annotations are linked, not copied (a local disk; VOC2007 ids `000005` and VOC2012 ids
`2008_000002` never collide, and a collision with other content is refused). The seed's sets are
trainval_2007 + trainval_2012 (pool) and test_2007 (performance test), as conf/data/voc.yaml names them.
"""
from __future__ import annotations

import filecmp
import os

YEARS = ("2007", "2012")
SETS = ("trainval", "test")


class DevkitError(ValueError):
    """The download is not a VOCdevkit layout, or two years disagree on an image."""


def merge_vocdevkit(devkit: str, out: str) -> dict[str, int]:
    """Merge the years found under `devkit` (VOCdevkit/ or its parent) into `out`; returns the
    number of images per written set, e.g. {"trainval_2007": 5011, "test_2007": 4952, ...}."""
    if os.path.isdir(os.path.join(devkit, "VOCdevkit")):
        devkit = os.path.join(devkit, "VOCdevkit")
    years = [year for year in YEARS if os.path.isdir(os.path.join(devkit, f"VOC{year}"))]
    if not years:
        raise DevkitError(f"no VOC2007/ or VOC2012/ folder under '{devkit}': give the VOCdevkit folder of the download")
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    counts = {}
    for year in years:
        src = os.path.join(devkit, f"VOC{year}")
        for set_name in SETS:
            set_file = os.path.join(src, "ImageSets", "Main", f"{set_name}.txt")
            if not os.path.exists(set_file):
                continue  # VOC2012 has no public test set
            with open(set_file) as handle:
                ids = [line.split()[0] for line in handle if line.strip()]
            for image_id in ids:
                _link(os.path.join(src, "JPEGImages", f"{image_id}.jpg"), os.path.join(out, "JPEGImages", f"{image_id}.jpg"))
                _link(os.path.join(src, "Annotations", f"{image_id}.xml"), os.path.join(out, "Annotations", f"{image_id}.xml"))
            with open(os.path.join(out, "ImageSets", "Main", f"{set_name}_{year}.txt"), "w") as handle:
                handle.write("".join(f"{image_id}\n" for image_id in ids))
            counts[f"{set_name}_{year}"] = len(ids)
    return counts


def _link(src: str, dst: str) -> None:
    if not os.path.exists(src):
        raise DevkitError(f"'{src}' is listed in its image set but missing: is the download complete?")
    if os.path.lexists(dst):
        if os.path.realpath(dst) == os.path.realpath(src) or filecmp.cmp(dst, src, shallow=False):
            return
        raise DevkitError(f"'{dst}' exists with other content than '{src}': two years share an image id; "
                          "merge into an empty folder")
    os.symlink(os.path.abspath(src), dst)
