"""Parallel S3 listing (`pool._walk_s3`) against one paginator, and S3 vs local indexing, on moto's server.

The tree is awkward on purpose: keys at the root, 'a/b.jpg' beside 'a/b/c.jpg' ('.' sorts before '/'),
'a.b/', 'a-b/' and 'a b/' beside 'a/' (all sort before '/'), 4 levels of nesting, folder-marker objects,
non-image files, upper-case extensions, a 'a//b.jpg' key (an empty "folder") and non-ASCII names.
"""
from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import pytest

from raylib import pool, storage
from tests.helpers import small_s3_pages

# Keys a local folder can hold too (a file and a directory of the same name can't both exist there).
COMMON_KEYS = [
    "0.jpg", "A.JPG", "a.jpg", "a-b.jpg", "a b.jpg", "a+b.png", "root.PNG", "readme.txt", "z.jpeg", "é.jpg",
    ".hidden.jpg", ".hidden/x.jpg",
    "a/b.jpg", "a/b/c.jpg", "a/b/c/d.png", "a/b.c/e.jpg", "a/b-c/f.jpg", "a/notes.json", "a/B.JPG",
    "a.b/x.png", "a-b/x.jpg", "a b/x.jpg", "a0/x.jpg", "aa/x.jpg",
    "d1/d2/d3/d4/deep.JPG", "d1/d2/d3/d4/deep.jpg", "d1/d2/d3/mid.png", "d1/d2/top.webp", "d1/x.bmp",
    "d1/d2/d3/d4/d5/deeper.jpeg", "d1/d2/d3/d4/readme.md",
    "zz/ü/ü.jpg", "zz/u/u.jpg",
] + [
    f"site={site:02d}/day={day:02d}/img_{n:03d}.{ext}"
    for site, day, (n, ext) in itertools.product(
        range(4), range(3), enumerate(["jpg", "JPG", "png", "PNG", "jpeg", "txt", "json", "webp", "bmp", "jpg"]))
] + [f"many/p{p:03d}/x.jpg" for p in range(30)]  # more sub-prefixes than a small page holds

# Keys only S3 can hold: folder markers, a key beside a "folder" of the same name, an empty path part.
S3_ONLY_KEYS = ["a/", "a/b/", "empty/", "d1/d2/", "site=00/", "a/b", "cam", "cam/1.jpg.txt", "a//b.jpg",
                "many/p000/"]

# Keys outside the root prefix 'raw/' that a prefix listing must not return.
OUTSIDE = ["raw.jpg", "raw-1/x.jpg", "raw0/x.jpg", "rawer/x.jpg", "r/x.jpg"]

# (threads, fan_out_levels): one thread, no fan-out (one paginator), fan-out deeper than the tree, the defaults.
COMBOS = [(1, 0), (1, 1), (1, 3), (4, 2), (16, 3), (3, 10), (pool.LIST_THREADS, pool.FAN_OUT_LEVELS)]


def _put_all(client, bucket: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(8) as executor:
        list(executor.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=b"x"), keys))


def _paginator_keys(client, bucket: str, prefix: str) -> list[str]:
    """What raylib.pool listed before the parallel listing: one paginator, markers dropped, relative keys."""
    keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])]
    return [key[len(prefix):] for key in keys if not key.endswith("/")]


@pytest.fixture(scope="module")
def awkward_bucket(s3_server):
    """The tree at the bucket root and again under 'raw/', with neighbours of 'raw/' outside it; written
    once for the module (conftest's `s3_bucket` is per test) and only read by the tests."""
    import boto3

    client = boto3.client("s3")
    bucket = "t-pool-listing"
    client.create_bucket(Bucket=bucket)
    tree = COMMON_KEYS + S3_ONLY_KEYS
    _put_all(client, bucket, tree + [f"raw/{key}" for key in tree] + OUTSIDE)
    return f"s3://{bucket}", client, bucket


@pytest.mark.s3
def test_walk_s3_matches_one_paginator(awkward_bucket):
    s3_uri, client, bucket = awkward_bucket
    for root, prefix, combos in [(s3_uri, "", COMBOS[:3] + COMBOS[-1:]), (f"{s3_uri}/raw", "raw/", COMBOS),
                                 (f"{s3_uri}/raw/", "raw/", [(4, 2)]), (f"{s3_uri}/raw/d1", "raw/d1/", [(2, 3)]),
                                 (f"{s3_uri}/nothing", "nothing/", [(1, 0), (4, 2)])]:
        expected = _paginator_keys(client, bucket, prefix)
        assert len(expected) >= (0 if prefix == "nothing/" else 5), prefix
        for threads, fan_out_levels in combos:
            got = list(pool._walk_s3(root, threads=threads, fan_out_levels=fan_out_levels))
            assert got == expected, (root, threads, fan_out_levels)
    # The whole tree under 'raw/': every key but the markers, nothing from 'raw.jpg' or 'raw0/'.
    assert sorted(pool._walk_s3(f"{s3_uri}/raw")) == sorted(
        key for key in COMMON_KEYS + S3_ONLY_KEYS if not key.endswith("/"))


@pytest.mark.s3
@pytest.mark.parametrize("threads, fan_out_levels", [(1, 1), (4, 3)])
def test_walk_s3_matches_one_paginator_across_pages(awkward_bucket, monkeypatch, threads, fan_out_levels):
    """Pages of 7 entries: keys and CommonPrefixes of one level (30 under 'many/') span several pages."""
    s3_uri, client, bucket = awkward_bucket
    expected = _paginator_keys(client, bucket, "raw/")
    pages = small_s3_pages(monkeypatch, 7)
    assert list(pool._walk_s3(f"{s3_uri}/raw", threads=threads, fan_out_levels=fan_out_levels)) == expected
    assert len(pages) > len(expected) / 7  # the small pages were used


@pytest.mark.s3
def test_index_folder_same_ids_on_s3_and_locally(awkward_bucket, tmp_path):
    s3_uri, client, bucket = awkward_bucket
    local = tmp_path / "raw"
    for key in COMMON_KEYS:
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(b"x")

    # Manifests written locally: the bucket stays as the other tests list it.
    assert pool.index_folder(f"{s3_uri}/raw/", str(tmp_path / "s3.parquet")) > 0
    assert pool.index_folder(str(local), str(tmp_path / "local.parquet")) > 0

    s3_table = storage.read_table(str(tmp_path / "s3.parquet"))
    local_table = storage.read_table(str(tmp_path / "local.parquet"))
    s3_ids = s3_table.column("image_id").to_pylist()
    assert s3_ids == local_table.column("image_id").to_pylist()
    # The S3-only keys add no image ('a//b.jpg' is refused by safe_relpath), hidden and non-image keys are out.
    assert s3_ids == [key for key in _paginator_keys(client, bucket, "raw/")
                      if pool._is_image(key, pool.IMAGE_EXTENSIONS) and "//" not in key]
    assert {"A.JPG", "root.PNG", "a/b.jpg", "a/b/c.jpg", "a.b/x.png", "d1/d2/d3/d4/deep.JPG"} <= set(s3_ids)
    assert not [i for i in s3_ids if i.startswith(".") or "/." in i or i.endswith((".txt", ".json", ".md"))]
    assert s3_table.column("uri").to_pylist() == [f"{s3_uri}/raw/{i}" for i in s3_ids]
