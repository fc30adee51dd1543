"""Storage: local and S3 (a real moto server over HTTP) through one URI interface."""
from __future__ import annotations

import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylib import schemas, storage


def pool_table(n: int = 5) -> pa.Table:
    ids = [f"img{i}" for i in range(n)]
    widths = pa.array([i * 10 if i % 2 else None for i in range(n)], pa.int32())
    return pa.table([pa.array(ids), pa.array([f"s3://b/{i}.jpg" for i in ids]), widths, widths], schema=schemas.POOL)


def bucket_and_key(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


# -------------------------------------------------------------------------------------------- S3


@pytest.mark.s3
def test_parquet_round_trip_on_s3_and_read_back_with_boto3(s3_bucket):
    import boto3

    uri = f"{s3_bucket}/run/pool.parquet"
    storage.write_table(pool_table(), uri)

    assert storage.read_table(uri).equals(pool_table())
    bucket, key = bucket_and_key(uri)
    body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    assert pq.read_table(io.BytesIO(body)).equals(pool_table())  # a plain Parquet object, readable by others


@pytest.mark.s3
def test_bytes_round_trip_on_s3_both_ways(s3_bucket):
    import boto3

    client = boto3.client("s3")
    uri = f"{s3_bucket}/a/b/file.bin"
    payload = bytes(range(256)) * 10
    storage.write_bytes(uri, payload)
    bucket, key = bucket_and_key(uri)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == payload
    assert storage.read_bytes(uri) == payload

    client.put_object(Bucket=bucket, Key="from-boto3.txt", Body="héllo".encode())
    assert storage.read_text(f"{s3_bucket}/from-boto3.txt") == "héllo"


@pytest.mark.s3
def test_list_exists_delete_on_s3(s3_bucket):
    for name in ("r/x.parquet", "r/sub/y.parquet", "r/z.json", "other/w.parquet"):
        storage.write_bytes(f"{s3_bucket}/{name}", b"1")
    assert storage.list_files(f"{s3_bucket}/r", ".parquet") == [f"{s3_bucket}/r/sub/y.parquet", f"{s3_bucket}/r/x.parquet"]
    assert storage.list_files(f"{s3_bucket}/nothing-here") == []
    assert storage.exists(f"{s3_bucket}/r/z.json") and not storage.exists(f"{s3_bucket}/r/missing.json")
    storage.delete(f"{s3_bucket}/r")
    assert storage.list_files(f"{s3_bucket}/r") == []
    assert storage.exists(f"{s3_bucket}/other/w.parquet")


@pytest.mark.s3
def test_read_directory_of_parquet_on_s3(s3_bucket):
    storage.write_table(pool_table(3), f"{s3_bucket}/d/part-0.parquet")
    storage.write_table(pool_table(5).slice(3), f"{s3_bucket}/d/part-1.parquet")
    batches = list(storage.iter_parquet_batches(f"{s3_bucket}/d", batch_size=2))
    ids = [i for b in batches for i in b.column("image_id").to_pylist()]
    assert ids == [f"img{i}" for i in range(5)]


# ----------------------------------------------------------------------------------------- local


def test_iter_parquet_batches_reads_a_file_or_the_parquet_files_of_a_folder(tmp_path):
    folder = tmp_path / "d"
    storage.write_table(pool_table(3), str(folder / "part-0.parquet"))
    storage.write_table(pool_table(5).slice(3), str(folder / "part-1.parquet"))
    (folder / "part-2.parquet.tmp-0123").write_bytes(b"half a file from an interrupted write")
    (folder / "notes.txt").write_text("not parquet")
    ids = [i for b in storage.iter_parquet_batches(str(folder), batch_size=2) for i in b.column("image_id").to_pylist()]
    assert ids == [f"img{i}" for i in range(5)]
    one = list(storage.iter_parquet_batches(str(folder / "part-1.parquet"), columns=["image_id"]))
    assert [b.column_names for b in one] == [["image_id"]] and sum(b.num_rows for b in one) == 2
    assert list(storage.iter_parquet_batches(str(tmp_path / "empty_or_missing"))) == []


def test_local_parquet_and_text_round_trip(tmp_path):
    uri = str(tmp_path / "deep" / "dir" / "pool.parquet")  # parent folders are created
    storage.write_table(pool_table(), uri)
    assert storage.read_table(uri, columns=["image_id"]).column("image_id").to_pylist() == [f"img{i}" for i in range(5)]
    storage.write_text(str(tmp_path / "t.txt"), "ünïcode")
    assert storage.read_text(f"file://{tmp_path}/t.txt") == "ünïcode"


def test_local_atomic_write_leaves_no_temporary_files(tmp_path):
    uri = str(tmp_path / "out.bin")
    storage.write_bytes(uri, b"first")
    storage.write_bytes(uri, b"second")  # overwrite replaces whole
    storage.write_table(pool_table(), str(tmp_path / "p.parquet"))
    assert sorted(os.listdir(tmp_path)) == ["out.bin", "p.parquet"]
    assert storage.read_bytes(uri) == b"second"


def test_failed_local_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    uri = str(tmp_path / "out.bin")
    storage.write_bytes(uri, b"old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes(uri, b"new")
    assert os.listdir(tmp_path) == ["out.bin"]
    assert (tmp_path / "out.bin").read_bytes() == b"old"


def test_list_files_local(tmp_path):
    for name in ("a.parquet", "sub/b.parquet", "sub/c.txt"):
        storage.write_bytes(str(tmp_path / name), b"x")
    assert storage.list_files(str(tmp_path), ".parquet") == [str(tmp_path / "a.parquet"), str(tmp_path / "sub" / "b.parquet")]
    assert len(storage.list_files(str(tmp_path))) == 3
    assert storage.list_files(str(tmp_path / "missing")) == []


def test_exists_and_delete_local(tmp_path):
    storage.write_bytes(str(tmp_path / "d" / "f"), b"x")
    assert storage.exists(str(tmp_path / "d" / "f"))
    storage.delete(str(tmp_path / "d"))
    assert not storage.exists(str(tmp_path / "d"))
    storage.delete(str(tmp_path / "never-existed"))  # a missing path is fine


def test_read_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(str(tmp_path / "nope"))


@pytest.mark.parametrize("uri", ["gs://bucket/x", "http://host/x", "hdfs://nn/x"])
def test_unsupported_scheme_is_a_clear_error(uri):
    with pytest.raises(ValueError, match="unsupported URI scheme.*s3://bucket/prefix"):
        storage.resolve(uri)


def test_join_keeps_s3_uris_posix():
    assert storage.join("s3://b/run/", "round=01", "x.parquet") == "s3://b/run/round=01/x.parquet"
    assert storage.join("/tmp/run", "a") == os.path.join("/tmp/run", "a")


def test_s3_env_passes_settings_but_never_credentials(monkeypatch):
    # Ray logs runtime envs (runtime_env_agent.log): what s3_env returns must be safe to log.
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-never-shipped")
    env = storage.s3_env()
    assert env["AWS_REGION"] == os.environ["AWS_REGION"]
    assert env["AWS_ENDPOINT_URL"] == os.environ["AWS_ENDPOINT_URL"]
    assert os.environ["AWS_SECRET_ACCESS_KEY"] and os.environ["AWS_ACCESS_KEY_ID"]
    for secret in ("UNRELATED_SECRET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert secret not in env


@pytest.mark.parametrize("where", ["local", "s3"])
def test_iter_files_streams_relative_paths_with_the_suffix(where, tmp_path, request):
    root = str(tmp_path / "d") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/deliveries/d"
    for name in ("a.xml", "b.jpg", "sub/c.xml", "sub/deeper/d.xml"):
        storage.write_bytes(storage.join(root, name), b"x")
    storage.write_bytes(storage.join(root + "-sibling", "e.xml"), b"x")  # shares the prefix, not the folder
    if where == "local":
        storage.write_bytes(storage.join(root, ".hidden", "f.xml"), b"x")
    listed = storage.iter_files(root, ".xml")
    assert not isinstance(listed, list)  # a generator: a folder of millions is not held
    assert sorted(listed) == ["a.xml", "sub/c.xml", "sub/deeper/d.xml"]
    assert list(storage.iter_files(storage.join(root, "missing"), ".xml")) == []
