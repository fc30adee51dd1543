"""Turn a standard Pascal VOC download into the layout `data=voc` reads (links, no copies):

    python jobs/make_voc.py ~/data/VOCdevkit /data/VOC0712
    python jobs/loop.py experiment=voc_1gpu data.root=/data/VOC0712
"""
import argparse

from raylib.formats.vocdevkit import DevkitError, merge_vocdevkit

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("devkit", help="the VOCdevkit folder (holding VOC2007/ and/or VOC2012/)")
    parser.add_argument("out", help="the merged root to write (data.root)")
    args = parser.parse_args()
    try:
        counts = merge_vocdevkit(args.devkit, args.out)
    except DevkitError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"{args.out}: " + ", ".join(f"{name} {n} images" for name, n in counts.items()))
    print(f"next: python jobs/loop.py experiment=voc_1gpu data.root={args.out}")
