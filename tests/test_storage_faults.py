"""S3 faults: transient 5xx answers and dropped connections are retried; a permanent failure stops
with a clear message and leaves no committed output behind."""
from __future__ import annotations

import boto3
import pyarrow as pa
import pytest

from raylib import schemas, storage
from raylib.commit import run_stage
from raylib.paths import RoundPaths
from tests.s3_fault_proxy import FaultProxy
from tests.conftest import FAKE_SECRET_KEY

pytestmark = pytest.mark.s3


@pytest.fixture
def proxy(s3_server, monkeypatch):
    fault_proxy = FaultProxy(s3_server).start()
    # Filesystems are cached per endpoint with their keep-alive connections; a new proxy can get the
    # port of an earlier, stopped one, whose pooled connections would then fail as extra "faults".
    storage._s3_filesystem.cache_clear()
    # Clients find S3 through the standard variable, as on a real deployment.
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.url)
    yield fault_proxy
    fault_proxy.stop()


def _table(n: int = 1000) -> pa.Table:
    return pa.table({"image_id": [f"img{i}" for i in range(n)], "uri": [f"s3://b/{i}.jpg" for i in range(n)]})


@pytest.mark.parametrize("fault", ["503", "500", "drop"])
def test_transient_faults_are_retried(proxy, s3_bucket, fault):
    uri = f"{s3_bucket}/t/pool.parquet"
    proxy.fail_next(3, fault)
    storage.write_table(_table(), uri)
    proxy.fail_next(3, fault)
    back = storage.read_table(uri)
    assert proxy.faults_served == 6
    assert back.column("image_id").to_pylist() == _table().column("image_id").to_pylist()


def test_boto3_through_the_proxy_retries_too(proxy, s3_bucket):
    client = boto3.client("s3", endpoint_url=proxy.url)
    proxy.fail_next(2, "503")
    client.put_object(Bucket=s3_bucket[5:], Key="k", Body=b"payload")
    assert client.get_object(Bucket=s3_bucket[5:], Key="k")["Body"].read() == b"payload"
    assert proxy.faults_served == 2


def test_permanent_failure_stops_the_stage_without_committing(proxy, s3_bucket, monkeypatch):
    monkeypatch.setenv("RAYLIB_S3_RETRY_ATTEMPTS", "3")  # fail within seconds, not minutes of backoff
    rp = RoundPaths(f"{s3_bucket}/run", 0)
    proxy.permanent = "503"

    def write_selection() -> dict:
        table = schemas.check(pa.table({"round": [0], "image_id": ["a"], "class_id": [1], "score": [0.3],
                                        "rank": [0]}), schemas.SELECTION, "selection")
        storage.write_table(table, rp.selection)
        return {"n_images": 1}

    with pytest.raises(OSError) as error:
        run_stage(rp, "select", write_selection)
    message = str(error.value)
    assert "503" in message or "ServiceUnavailable" in message or "injected" in message
    assert FAKE_SECRET_KEY not in message
    proxy.permanent = None
    assert not storage.exists(rp.marker("select")), "a failed stage must not be committed"
    assert not storage.exists(rp.selection), "no half-written output"
    # The rerun after the outage commits normally.
    run_stage(rp, "select", write_selection)
    assert storage.exists(rp.marker("select")) and storage.read_table(rp.selection).num_rows == 1
