"""Pool manifests: VOC image sets, image folders (local and S3), streaming reads, remaining pool."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from raylib import pool, schemas, storage
from tests.helpers import small_s3_pages


def read_manifest(uri: str) -> pa.Table:
    table = storage.read_table(uri)
    assert table.schema.equals(schemas.POOL), table.schema
    return table


# ----------------------------------------------------------------------------------------- VOC sets


def write_set(root, name: str, text: str) -> None:
    folder = root / "ImageSets" / "Main"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.txt").write_text(text)


def test_index_voc_sets_first_token_blank_lines_and_duplicates(tmp_path):
    write_set(tmp_path, "trainval_2007", "000005\n000007  1\n\n   \n000009 -1\n")
    write_set(tmp_path, "trainval_2012", "2008_000002\n000007\n2008_000003\n")
    out = str(tmp_path / "out" / "pool.parquet")

    assert pool.index_voc(str(tmp_path), ["trainval_2007", "trainval_2012"], out) == 5

    table = read_manifest(out)
    assert table.column("image_id").to_pylist() == ["000005", "000007", "000009", "2008_000002", "2008_000003"]
    assert table.column("uri").to_pylist()[0] == os.path.join(str(tmp_path), "JPEGImages", "000005.jpg")
    assert table.column("width").null_count == 5 and table.column("height").null_count == 5
    assert os.listdir(tmp_path / "out") == ["pool.parquet"]  # no temporary files left


def test_index_voc_relative_root_gives_absolute_uris(tmp_path, monkeypatch):
    write_set(tmp_path / "voc", "test", "a\n")
    monkeypatch.chdir(tmp_path)
    assert pool.index_voc("voc", ["test"], "pool.parquet") == 1
    assert read_manifest(str(tmp_path / "pool.parquet")).column("uri").to_pylist() == [
        str(tmp_path / "voc" / "JPEGImages" / "a.jpg")
    ]


@pytest.mark.s3
def test_index_voc_on_s3(s3_bucket):
    storage.write_text(f"{s3_bucket}/VOC/ImageSets/Main/trainval.txt", "2007_000027\n2007_000032\n")
    assert pool.index_voc(f"{s3_bucket}/VOC", ["trainval"], f"{s3_bucket}/run/pool.parquet") == 2
    table = read_manifest(f"{s3_bucket}/run/pool.parquet")
    assert table.column("uri").to_pylist() == [f"{s3_bucket}/VOC/JPEGImages/2007_000027.jpg",
                                               f"{s3_bucket}/VOC/JPEGImages/2007_000032.jpg"]


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/abs/id", "a\\b", "ok/../x"])
def test_index_voc_rejects_traversal_ids_naming_set_and_line(tmp_path, bad):
    write_set(tmp_path, "trainval", f"000001\n{bad}\n")
    out = tmp_path / "pool.parquet"
    with pytest.raises(pool.PoolError, match=r"trainval\.txt' line 2") as info:
        pool.index_voc(str(tmp_path), ["trainval"], str(out))
    assert repr(bad) in str(info.value)
    assert not out.exists() and os.listdir(tmp_path) == ["ImageSets"]  # nothing half-written


def test_index_voc_missing_set_is_a_clear_error(tmp_path):
    with pytest.raises(pool.PoolError, match="nosuch.txt' not found"):
        pool.index_voc(str(tmp_path), ["nosuch"], str(tmp_path / "p.parquet"))


# ------------------------------------------------------------------------------------------ folders


def make_tree(root, files: list[str]) -> None:
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


IMAGES = ["a.jpg", "b.PNG", "c.JPG", "cam1/d.jpeg", "cam1/sub/e.webp", "cam2/f.bmp"]
JUNK = ["notes.txt", "Thumbs.db", ".hidden.jpg", ".cache/g.jpg", "cam1/.h.png", "cam1/readme", "cam2/x.jpg.part"]


def test_index_folder_skips_junk_and_keeps_upper_case_extensions(tmp_path):
    # Decision: extensions match case-insensitively (cameras write .JPG); the id keeps the real case.
    root = tmp_path / "images"
    make_tree(root, IMAGES + JUNK)
    (root / "dir.jpg").mkdir()  # a directory with an image-like name is not an image
    out = str(tmp_path / "pool.parquet")

    assert pool.index_folder(str(root), out) == len(IMAGES)

    table = read_manifest(out)
    assert sorted(table.column("image_id").to_pylist()) == sorted(IMAGES)
    for image_id, uri in zip(table.column("image_id").to_pylist(), table.column("uri").to_pylist()):
        assert uri == os.path.join(str(root), image_id) and os.path.isfile(uri)


def test_index_folder_order_is_deterministic(tmp_path):
    # The same order as S3 lists keys (byte order of the full key: '.' < '/' < 'A' < 'a').
    files = ["z.jpg", "a/b.jpg", "m.jpg", "a/a.jpg", "a.jpg", "a-b.jpg", "a/c/d.jpg", "B.jpg"]
    make_tree(tmp_path / "img", files)
    pool.index_folder(str(tmp_path / "img"), str(tmp_path / "p.parquet"))
    ids = read_manifest(str(tmp_path / "p.parquet")).column("image_id").to_pylist()
    assert ids == sorted(files, key=lambda f: f.encode())


def test_index_folder_skips_unsafe_names_with_a_warning(tmp_path, caplog):
    make_tree(tmp_path / "img", ["good.jpg", "we\\ird.jpg", "tab\tname.jpg"])
    assert pool.index_folder(str(tmp_path / "img"), str(tmp_path / "p.parquet")) == 1
    assert read_manifest(str(tmp_path / "p.parquet")).column("image_id").to_pylist() == ["good.jpg"]
    assert "we\\\\ird.jpg" in caplog.text or "we\\ird.jpg" in caplog.text


def test_index_folder_missing_root(tmp_path):
    with pytest.raises(pool.PoolError, match="does not exist"):
        pool.index_folder(str(tmp_path / "nope"), str(tmp_path / "p.parquet"))


def test_index_folder_writes_in_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "WRITE_BATCH_ROWS", 3)
    make_tree(tmp_path / "img", [f"{i:02d}.jpg" for i in range(10)])
    out = str(tmp_path / "p.parquet")
    assert pool.index_folder(str(tmp_path / "img"), out) == 10
    assert pq.ParquetFile(out).metadata.num_row_groups == 4  # 3 + 3 + 3 + 1: rows were streamed
    assert read_manifest(out).num_rows == 10


@pytest.mark.s3
def test_index_s3_prefix(s3_bucket):
    import boto3

    client = boto3.client("s3")
    bucket = s3_bucket[len("s3://"):]
    keys = ["imgs/a.jpg", "imgs/B.JPEG", "imgs/cam/c.png", "imgs/notes.txt", "imgs/.hidden.jpg",
            "imgs/cam/", "imgsother/x.jpg", "other/y.jpg"]
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    out = f"{s3_bucket}/manifests/pool.parquet"

    assert pool.index_folder(f"{s3_bucket}/imgs/", out) == 3

    table = read_manifest(out)
    assert table.column("image_id").to_pylist() == ["B.JPEG", "a.jpg", "cam/c.png"]  # S3 key order
    assert table.column("uri").to_pylist() == [f"{s3_bucket}/imgs/B.JPEG", f"{s3_bucket}/imgs/a.jpg",
                                               f"{s3_bucket}/imgs/cam/c.png"]
    listed = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="manifests/")["Contents"]]
    assert "manifests/pool.parquet" in listed
    assert not [key for key in listed if ".tmp-" in key]  # the temporary object was moved, not left behind


@pytest.mark.s3
def test_index_s3_paginates(s3_bucket, monkeypatch):
    import boto3

    client = boto3.client("s3")
    bucket = s3_bucket[len("s3://"):]
    for i in range(7):
        client.put_object(Bucket=bucket, Key=f"p/{i}.jpg", Body=b"x")
    pages = small_s3_pages(monkeypatch, 2)
    assert pool.index_folder(f"{s3_bucket}/p", f"{s3_bucket}/pool.parquet") == 7
    assert pages == [2, 2, 2, 1]


# ------------------------------------------------------------------------------ streaming and remaining


def write_manifest(path: str, ids: list[str]) -> None:
    nulls = pa.nulls(len(ids), pa.int32())
    table = pa.table([pa.array(ids), pa.array([f"/data/{i}" for i in ids]), nulls, nulls], schema=schemas.POOL)
    pq.write_table(table, path, row_group_size=4)


def test_iter_manifest_streams_in_batches(tmp_path):
    path = str(tmp_path / "m.parquet")
    write_manifest(path, [f"i{n}" for n in range(10)])
    batches = list(pool.iter_manifest(path, batch_size=3))
    assert all(b.num_rows <= 3 for b in batches)
    assert all(b.schema.equals(schemas.POOL) for b in batches)
    assert [i for b in batches for i in b.column("image_id").to_pylist()] == [f"i{n}" for n in range(10)]


def test_iter_manifest_rejects_a_foreign_file(tmp_path):
    path = str(tmp_path / "m.parquet")
    pq.write_table(pa.table({"image_id": ["a"], "path": ["x"]}), path)
    with pytest.raises(schemas.SchemaError, match="unexpected column"):
        list(pool.iter_manifest(path, 10))


def test_write_remaining_excludes_labelled_ids(tmp_path):
    path = str(tmp_path / "m.parquet")
    ids = [f"i{n}" for n in range(10)]
    write_manifest(path, ids)
    out = str(tmp_path / "round" / "remaining.parquet")

    assert pool.write_remaining(path, {"i0", "i3", "i9", "not-in-pool"}, out) == 7

    table = read_manifest(out)
    assert table.column("image_id").to_pylist() == ["i1", "i2", "i4", "i5", "i6", "i7", "i8"]
    assert table.column("uri").to_pylist()[0] == "/data/i1"
    assert pool.write_remaining(path, set(), str(tmp_path / "all.parquet")) == 10
    assert pool.write_remaining(path, set(ids), str(tmp_path / "none.parquet")) == 0
    assert read_manifest(str(tmp_path / "none.parquet")).num_rows == 0


def _remaining_by_is_in(manifest: pa.Table, labelled: list[str]) -> pa.Table:
    """What write_remaining wrote before the anti-join: the manifest filtered by `is_in`, in its order."""
    return manifest.filter(pc.invert(pc.is_in(manifest.column("image_id"), pa.array(labelled, pa.string()))))


def write_labels(path: str, ids: list[str]) -> str:
    n = len(ids)
    pq.write_table(pa.table([pa.array(ids, pa.string()), pa.array(["train"] * n, pa.string()),
                             pa.array([0] * n, pa.int16()), pa.array([[]] * n, pa.list_(schemas.OBJECT))],
                            schema=schemas.LABELS), path)
    return path


@pytest.mark.parametrize("labelled_fraction,join_keys", [(0.0, pool.JOIN_KEYS), (0.3, pool.JOIN_KEYS),
                                                          (0.9, pool.JOIN_KEYS), (1.0, pool.JOIN_KEYS), (0.9, 250)])
def test_write_remaining_anti_join_matches_is_in_and_keeps_the_order(tmp_path, monkeypatch, labelled_fraction,
                                                                     join_keys):
    """A manifest folder of three files (rows numbered across files and batches), ids in no sorted order,
    the labels file as the input: the same rows, in the same order, as the per-batch `is_in` wrote;
    nothing labelled and everything labelled included; a labelled set joined in parts (an id labelled
    twice, in two parts, drops its row once)."""
    monkeypatch.setattr(pool, "JOIN_KEYS", join_keys)
    rng = np.random.default_rng(3)
    ids = [f"cam{n % 7}/img{n:05d}.jpg" for n in rng.permutation(3000)]
    folder = tmp_path / "pool"
    folder.mkdir()
    for part, chunk in enumerate((ids[:1000], ids[1000:1001], ids[1001:])):
        write_manifest(str(folder / f"part-{part}.parquet"), chunk)
    labelled = list(rng.choice(ids, int(labelled_fraction * len(ids)), replace=False)) + ["not-in-pool"]
    labelled += labelled[:1]
    labels_uri = write_labels(str(tmp_path / "labels.parquet"), labelled)
    out = str(tmp_path / "remaining.parquet")

    expected = _remaining_by_is_in(pa.concat_tables(pq.read_table(folder / f"part-{p}.parquet") for p in range(3)),
                                   labelled)
    assert pool.write_remaining(str(folder), labels_uri, out) == expected.num_rows
    assert read_manifest(out).equals(expected.cast(schemas.POOL))
    # Its complement (the labelled set's manifest, which diversity strategies score): the other rows, in order.
    whole = pa.concat_tables(pq.read_table(folder / f"part-{p}.parquet") for p in range(3))
    complement = whole.filter(pc.is_in(whole.column("image_id"), pa.array(labelled, pa.string())))
    assert pool.write_labelled(str(folder), labels_uri, str(tmp_path / "labelled.parquet")) == complement.num_rows
    assert read_manifest(str(tmp_path / "labelled.parquet")).equals(complement.cast(schemas.POOL))


def test_write_remaining_with_no_labels_file_rows_copies_the_pool(tmp_path):
    path = str(tmp_path / "m.parquet")
    write_manifest(path, ["b", "a", "c"])
    out = str(tmp_path / "r.parquet")
    assert pool.write_remaining(path, write_labels(str(tmp_path / "l.parquet"), []), out) == 3
    assert read_manifest(out).column("image_id").to_pylist() == ["b", "a", "c"]


@pytest.mark.s3
def test_write_remaining_on_s3(s3_bucket, tmp_path):
    local = str(tmp_path / "m.parquet")
    write_manifest(local, ["a", "b", "c"])
    storage.write_bytes(f"{s3_bucket}/pool.parquet", (tmp_path / "m.parquet").read_bytes())
    assert pool.write_remaining(f"{s3_bucket}/pool.parquet", {"b"}, f"{s3_bucket}/r1/pool.parquet") == 2
    assert read_manifest(f"{s3_bucket}/r1/pool.parquet").column("image_id").to_pylist() == ["a", "c"]


def test_shared_ids_between_test_set_and_pool(tmp_path):
    write_set(tmp_path, "trainval", "a\nb\nc\nd\n")
    write_set(tmp_path, "test", "x\nc\na\n")
    pool_uri, test_uri = str(tmp_path / "pool.parquet"), str(tmp_path / "test.parquet")
    pool.index_voc(str(tmp_path), ["trainval"], pool_uri)
    pool.index_voc(str(tmp_path), ["test"], test_uri)
    assert pool.shared_ids(test_uri, pool_uri) == (2, ["a", "c"])
    assert pool.shared_ids(test_uri, pool_uri, limit=1) == (2, ["a"])
    write_set(tmp_path, "test2", "x\ny\n")
    pool.index_voc(str(tmp_path), ["test2"], str(tmp_path / "test2.parquet"))
    assert pool.shared_ids(str(tmp_path / "test2.parquet"), pool_uri) == (0, [])


def test_a_test_set_overlapping_the_pool_is_refused(tmp_path):
    from raylib.config import Config, DataConfig
    from raylib.dataset import ensure_dataset

    write_set(tmp_path / "voc", "trainval", "a\nb\n")
    write_set(tmp_path / "voc", "test", "b\n")
    cfg = Config(run_root=str(tmp_path / "run"),
                 data=DataConfig(kind="voc", root=str(tmp_path / "voc"), classes=["cat"]))
    with pytest.raises(pool.PoolError, match=r"1 performance-test image\(s\) are also in the pool \(e.g. \['b'\]\)"):
        ensure_dataset(cfg)
    # The manifests are not left behind: after the sets are fixed, the same run indexes and checks again.
    write_set(tmp_path / "voc", "test", "c\n")
    dataset = ensure_dataset(cfg)
    assert read_manifest(dataset.test_manifest).column("image_id").to_pylist() == ["c"]


def test_image_uris_reads_only_the_asked_ids(tmp_path):
    manifest = str(tmp_path / "pool.parquet")
    storage.write_table(schemas.check(pa.table({"image_id": ["a", "b", "c"], "uri": ["/a", "/b", "/c"]}),
                                      schemas.POOL, "pool"), manifest)
    assert pool.image_uris(manifest, ["c", "a", "zz"]) == {"a": "/a", "c": "/c"}
    assert pool.image_uris(manifest, []) == {}


def test_round_pool_is_the_unlabelled_manifest_when_the_loop_wrote_one(tmp_path):
    from raylib.paths import RoundPaths

    rp = RoundPaths(str(tmp_path / "run"), 1)
    assert pool.round_pool(rp, "/whole/pool.parquet") == "/whole/pool.parquet"
    storage.write_table(schemas.empty(schemas.POOL), rp.unlabelled)
    assert pool.round_pool(rp, "/whole/pool.parquet") == rp.unlabelled



def test_with_sizes_takes_each_images_size_from_the_scoring_parts(tmp_path):
    # image_status in two parts, as scoring writes it; an image it lacks, and one whose header failed (null).
    folder = tmp_path / "image_status"
    folder.mkdir()
    for part, (ids, widths, heights) in enumerate([(["b", "a"], [20, 10], [21, 11]), (["c"], [None], [None])]):
        n = len(ids)
        storage.write_table(pa.table({
            "round": pa.array([0] * n, pa.int16()), "image_id": ids, "status": ["ok"] * n, "error": [None] * n,
            "n_detections": pa.array([0] * n, pa.int32()), "width": pa.array(widths, pa.int32()),
            "height": pa.array(heights, pa.int32()), "uri": [f"/{i}.jpg" for i in ids]}, schema=schemas.IMAGE_STATUS),
            str(folder / f"part-{part:05d}.parquet"))
    items = pa.table({"image_id": ["a", "c", "d", "b"], "uri": ["/a.jpg", "/c.jpg", "/d.jpg", "/b.jpg"]})
    sized = pool.with_sizes(items, str(folder))
    assert sized.column("image_id").to_pylist() == ["a", "c", "d", "b"]
    assert sized.column("width").to_pylist() == [10, None, None, 20]
    assert sized.column("height").to_pylist() == [11, None, None, 21]
