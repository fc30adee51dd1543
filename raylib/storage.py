"""One way to turn a URI into a pyarrow filesystem + path: local paths and `s3://bucket/prefix`.

S3 endpoint, region and credentials come from the standard `AWS_*` environment variables
(`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, ...), which `configure_s3` can set from config.
Using the environment means Ray workers, pyarrow, Ray Data and boto3 all agree, and credentials never
pass through our own strings, logs or error messages. Only the endpoint, region and retry settings travel
to Ray workers in `runtime_env`: Ray writes runtime envs into its session logs (runtime_env_agent.log)
and shows them with the job, so credentials stay where each node already has them (local workers inherit
the driver's environment; cluster nodes use their instance profile or service account, infra/).
"""
from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import uuid
from typing import Iterable, Iterator
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

# Settings, not secrets: safe to ship in a runtime_env (AWS_ACCESS_KEY_ID & co. are deliberately absent).
S3_ENV_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "RAYLIB_S3_RETRY_ATTEMPTS",
)
# Transient S3 errors (5xx, throttling, dropped connections) are retried with the AWS SDK's standard
# backoff this many times before a stage fails; RAYLIB_S3_RETRY_ATTEMPTS overrides it.
S3_RETRY_ATTEMPTS = 8


# The preflight's requests (`access_problem`): a connection refused answers at once, a black-holed endpoint
# after PROBE_ATTEMPTS x PROBE_TIMEOUT_S, so a job says what is wrong within seconds, not after the stage
# clients' minutes of backoff (S3_RETRY_ATTEMPTS, boto3's 60 s connect timeout).
PROBE_TIMEOUT_S = 5
PROBE_ATTEMPTS = 2


class StorageAccessError(ValueError):
    """An S3 location of the config can't be used (endpoint, credentials, bucket, permissions): one line
    naming the key, what is wrong and the fix."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def configure_s3(endpoint_url: str | None = None, region: str | None = None) -> None:
    """Set the S3 endpoint/region for this process (and, via `s3_env`, for Ray workers)."""
    if endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = endpoint_url
    if region:
        os.environ["AWS_REGION"] = region


def s3_env() -> dict[str, str]:
    """The S3 settings (endpoint, region, retries; never credentials) set here, for Ray workers'
    `runtime_env["env_vars"]`."""
    return {name: os.environ[name] for name in S3_ENV_VARS if name in os.environ}


@functools.lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str | None, attempts: int) -> pafs.S3FileSystem:
    kwargs: dict = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
        "connect_timeout": 10,
        "request_timeout": 60,
    }
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def s3_client(connect_timeout: float = 10, read_timeout: float = 60, attempts: int | None = None):
    """A boto3 S3 client (endpoint, region and credentials from the environment, as pyarrow's) whose
    retries are bounded like `resolve`'s filesystems (standard mode: 5xx, throttling, dropped connections)."""
    import boto3
    import botocore.config

    attempts = attempts or int(os.environ.get("RAYLIB_S3_RETRY_ATTEMPTS", S3_RETRY_ATTEMPTS))
    return boto3.client("s3", config=botocore.config.Config(
        connect_timeout=connect_timeout, read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": attempts}))


def access_problem(uris: dict[str, str]) -> str | None:
    """Within seconds, the first reason why one of the S3 locations `uris` ({config key: URI}; local paths
    are skipped) can't be used: one line naming the key, what is wrong and the fix; None when each one's
    bucket lists its prefix. One LIST of one key per location, with PROBE_ATTEMPTS short tries."""
    located = {key: uri for key, uri in uris.items() if isinstance(uri, str) and is_s3(uri)}
    if not located:
        return None
    client = s3_client(PROBE_TIMEOUT_S, PROBE_TIMEOUT_S, PROBE_ATTEMPTS)
    seen = set()
    for key, uri in located.items():
        bucket, prefix = s3_bucket_prefix(uri)
        if (bucket, prefix) in seen:
            continue
        seen.add((bucket, prefix))
        try:
            client.list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/"), MaxKeys=1)
        except Exception as error:  # noqa: BLE001 - every failure is explained or passed on as one line
            return f"{key}: {explain_s3_error(error, uri)}"
    return None


def explain_s3_error(error: BaseException, uri: str) -> str:
    """What went wrong reaching `uri` and the fix, in one line, for boto3's and pyarrow's S3 errors: an
    endpoint that does not answer, missing or refused credentials, a missing bucket, a denied prefix."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or "AWS's S3"
    bucket = s3_bucket_prefix(uri)[0]
    code = str(((getattr(error, "response", None) or {}).get("Error") or {}).get("Code", ""))
    text = f"{code} {type(error).__name__} {error}"
    first = (str(error).splitlines() or [""])[0].split(': "')[0][:160]  # boto3's: less the request's URL
    if any(mark in text for mark in ("NoCredentialsError", "PartialCredentialsError", "Unable to locate credentials")):
        return (f"no AWS credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
                "or run where an instance profile or service account provides them")
    if any(mark in text for mark in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                                     "ReadTimeoutError", "NETWORK_CONNECTION", "Could not connect", "timed out")):
        return (f"the S3 endpoint {endpoint} does not answer ({first}): fix storage.endpoint_url (or "
                "AWS_ENDPOINT_URL), or check that the server runs and the network reaches it")
    if any(mark in text for mark in ("NoSuchBucket", "NO_SUCH_BUCKET", f"Bucket '{bucket}' not found")):
        return (f"bucket '{bucket}' does not exist at {endpoint}: create it, or fix the bucket in the URI "
                "(storage.bucket for the run root)")
    if code == "404":  # a bare 404, no S3 error code: a web server or proxy, or a bucket it hides
        return (f"{endpoint} answered 404 Not Found, without an S3 error, to a listing of bucket '{bucket}': fix "
                "storage.endpoint_url (or AWS_ENDPOINT_URL) if it is not the S3 server, else create the bucket")
    if any(mark in text for mark in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                                     "InvalidToken", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH")):
        return (f"the AWS credentials were refused for {uri} ({code or first}): check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or renew the session token")
    if any(mark in text for mark in ("AccessDenied", "ACCESS_DENIED", "AllAccessDisabled")) or code == "403":
        return (f"access denied to {uri}: grant this identity s3:ListBucket and s3:GetObject there (s3:PutObject "
                "for the run root), or point the key at a prefix it may use")
    return f"{uri} can't be used ({type(error).__name__}: {first}): check the URI and storage.endpoint_url"


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return (filesystem, path inside it) for a local path or an s3:// URI."""
    if is_s3(uri):
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        attempts = int(os.environ.get("RAYLIB_S3_RETRY_ATTEMPTS", S3_RETRY_ATTEMPTS))
        fs = _s3_filesystem(os.environ.get("AWS_ENDPOINT_URL"), region, attempts)
        return fs, uri[len("s3://") :].rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported URI scheme in '{uri}': use a local path or s3://bucket/prefix")
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), os.path.abspath(path)


def join(uri: str, *parts: str) -> str:
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    if not is_s3(uri):
        fs.create_dir(path, recursive=True)


def delete(uri: str) -> None:
    """Remove a file or a directory tree; a missing path is fine."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)
    elif is_s3(uri):
        # S3 has no directories: a prefix with objects under it reports NotFound on some servers.
        try:
            fs.delete_dir_contents(path, missing_dir_ok=True)
        except OSError:
            pass


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """The file's bytes; with `max_bytes`, at most max_bytes + 1 of them, so that a caller refuses a file
    larger than it accepts without loading it whole."""
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read() if max_bytes is None else stream.read(max_bytes + 1)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file so that readers never see half of it.

    Local: write a temporary sibling, then rename (atomic on POSIX). S3: a single PUT is atomic.
    """
    fs, path = resolve(uri)
    if is_s3(uri):
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    fs.create_dir(os.path.dirname(path), recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        # A failed write (disk full, interrupted) must not leave a stray partial file behind.
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_table(table: pa.Table, uri: str, row_group_size: int | None = None) -> None:
    """Write one Parquet file atomically (see `write_bytes`). `row_group_size`: rows per row group, the
    unit a streaming reader decodes at once (default: the whole file up to 1M rows)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=row_group_size)
    write_bytes(uri, sink.getvalue().to_pybytes())


@contextlib.contextmanager
def _streamed_into(uri: str) -> Iterator[pa.NativeFile]:
    """An output stream to a temporary sibling of `uri`, renamed to `uri` when the block completes (a
    crash leaves no partial file under the final name, and the sibling is removed)."""
    fs, path = resolve(uri)
    makedirs(posixpath.dirname(uri) or ".")
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open_output_stream(tmp) as sink:
            yield sink
        fs.move(tmp, path)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass
        raise


def write_batches(batches: Iterable[pa.RecordBatch], uri: str, schema: pa.Schema) -> int:
    """Stream record batches into one Parquet file at `uri` (through a temporary sibling, renamed when
    complete); returns the rows written. Memory is one batch, whatever the table's size."""
    count = 0
    with _streamed_into(uri) as sink, pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for batch in batches:
            writer.write_batch(batch)
            count += batch.num_rows
    return count


def write_chunks(uri: str, chunks: Iterable[bytes]) -> None:
    """Stream `chunks` into one file at `uri`, as `write_batches` does: memory is one chunk."""
    with _streamed_into(uri) as sink:
        for chunk in chunks:
            sink.write(chunk)


def read_table(uri: str, schema: pa.Schema | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file or a directory of Parquet files."""
    fs, path = resolve(uri)
    return pq.read_table(path, filesystem=fs, schema=schema, columns=columns)


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Files under `uri` (recursive) ending in `suffix`, as URIs of the same kind, sorted."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    prefix = "s3://" if is_s3(uri) else ""
    return sorted(
        prefix + info.path
        for info in infos
        if info.type == pafs.FileType.File and info.path.endswith(suffix)
    )


def s3_bucket_prefix(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b/` -> ("bucket", "a/b/"): the key prefix of the objects under it ("" at the root)."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def iter_files(uri: str, suffix: str = "") -> Iterator[str]:
    """Paths relative to `uri` ('/'-separated) of the files under it ending in `suffix`, as they are
    listed (no order), streaming: one directory handle at a time on disk, one page of 1,000 keys on S3
    (boto3's paginator). For folders of millions of files, where `list_files` holds a Python object per
    file. Hidden local entries are skipped, symlinked directories not followed; none under a missing `uri`."""
    if is_s3(uri):
        bucket, prefix = s3_bucket_prefix(uri)
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith(suffix) and not key.endswith("/"):  # "/": a folder marker object
                    yield key[len(prefix):]
        return
    root = resolve(uri)[1]
    if not os.path.isdir(root):
        return
    folders = [""]
    while folders:
        for rel, is_dir in visible_entries(root, folders.pop()):
            if is_dir:
                folders.append(rel)
            elif rel.endswith(suffix):
                yield rel


def visible_entries(root: str, rel_dir: str) -> Iterator[tuple[str, bool]]:
    """(path relative to `root`, is a directory) of the entries of folder `root/rel_dir` as scandir gives
    them: hidden ones skipped, symlinked directories not followed (no cycles), only files and folders."""
    with os.scandir(os.path.join(root, rel_dir)) as scan:
        for entry in scan:
            if entry.name.startswith("."):
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_dir(follow_symlinks=False):
                yield rel, True
            elif entry.is_file():
                yield rel, False


def iter_parquet_batches(uri: str, columns: list[str] | None = None, batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
    """Stream record batches from a Parquet file, or from every `.parquet` file under a folder (in
    name order; stray temporary siblings of an interrupted write are not read)."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        files = [path]
    else:
        files = [resolve(file_uri)[1] for file_uri in list_files(uri, ".parquet")]
    if not files:
        return iter(())
    return pads.dataset(files, filesystem=fs, format="parquet").to_batches(columns=columns, batch_size=batch_size)
