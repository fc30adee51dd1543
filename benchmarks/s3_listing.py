"""Listing an S3 prefix: `raylib.pool._walk_s3` (sub-prefixes found with a Delimiter, then listed whole in
threads) vs one `list_objects_v2` paginator over the whole prefix (what raylib.pool did before), on moto's
S3 server over HTTP on 127.0.0.1. Issue 22: >= 100,000 keys in nested prefixes.

    python benchmarks/s3_listing.py [--sites 10 --days 10 --per-day 1000] [--repeats 2] [--other-threads 4,1]

Keys: `raw/site=NN/day=NN/img_NNNNN.jpg` (empty bodies) plus a few folder markers and keys at the root
of the prefix. The first `--http-keys` go through `put_object` over HTTP in `--write-threads` threads
with one shared client; moto takes ~150 of those a second on a 2-core machine (100,000 would take
11 minutes), so the rest are put into moto's in-process backend directly. Every listing is over HTTP.

The paginator and `_walk_s3` with pool's defaults are timed best of `--repeats`, `_walk_s3` with
`--other-threads` once each (a listing of 100,000 keys takes moto about a minute on 2 cores), each in a
fresh boto3 client as `_walk_s3` makes one; every listing must return the same keys in the same order
as the paginator. Bounds printed with the results:
one 1,000-key page costs moto more the larger the bucket (it scans and sorts every key under the
prefix for each page), so the paginator's floor here is pages x the cost of one page from a
1,000-key bucket. moto is one Python process sharing the GIL with this client, so threads overlap
little: read the ratio as moto's, not S3's (S3 pages cost a round trip, ~tens of ms, regardless of
size, and parallel requests overlap).
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import socket
import time
from concurrent.futures import ThreadPoolExecutor

BUCKET = "listing-bench"
PREFIX = "raw/"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server():
    """moto's server in this process on a free port; fake credentials, as tests/conftest.py sets them."""
    port = _free_port()
    os.environ.update({
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "AKIAFAKEBENCHKEY0001",
        "AWS_SECRET_ACCESS_KEY": "fake-secret-benchmark-only",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


def keys_of(sites: int, days: int, per_day: int) -> list[str]:
    """The tree under PREFIX: nested images, folder markers, a few keys at its root."""
    keys = [f"{PREFIX}site={s:02d}/day={d:02d}/img_{n:05d}.jpg"
            for s in range(sites) for d in range(days) for n in range(per_day)]
    keys += [f"{PREFIX}site={s:02d}/" for s in range(sites)]  # folder markers
    keys += [f"{PREFIX}readme.txt", f"{PREFIX}cover.jpg", f"{PREFIX}site=00.jpg"]
    return keys


def write_keys(client, keys: list[str], http_keys: int, write_threads: int) -> None:
    """The first `http_keys` by put_object over HTTP (threads, one shared client), the rest into moto's
    backend in this process (same server, no HTTP)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    over_http, direct = keys[:http_keys], keys[http_keys:]
    started = time.perf_counter()
    done = 0
    with ThreadPoolExecutor(write_threads) as executor:
        for start in range(0, len(over_http), 1000):
            chunk = over_http[start:start + 1000]
            list(executor.map(lambda key: client.put_object(Bucket=BUCKET, Key=key, Body=b""), chunk))
            done += len(chunk)
            print(f"  put_object over HTTP: {done:,} keys, {done / (time.perf_counter() - started):,.0f} keys/s",
                  flush=True)
    if over_http:
        rate = len(over_http) / (time.perf_counter() - started)
        print(f"put_object over HTTP ({write_threads} threads): {rate:,.0f} keys/s; all {len(keys):,} this way "
              f"would take {len(keys) / rate / 60:.1f} min", flush=True)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    started = time.perf_counter()
    for i, key in enumerate(direct, start=1):
        backend.put_object(BUCKET, key, b"")
        if i % 25_000 == 0 or i == len(direct):
            print(f"  put into moto's backend: {i:,} keys, {i / (time.perf_counter() - started):,.0f} keys/s",
                  flush=True)


def paginator_listing(root_uri: str) -> list[str]:
    """raylib.pool's listing before the parallel one: one paginator, folder markers dropped, relative keys."""
    import boto3

    bucket, _, prefix = root_uri[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    prefix = f"{prefix}/" if prefix else ""
    paginator = boto3.client("s3").get_paginator("list_objects_v2")
    return [item["Key"][len(prefix):] for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", []) if not item["Key"].endswith("/")]


def best_of(repeats: int, fn) -> tuple[float, list[str]]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def one_page_seconds(client, bucket: str, prefix: str, repeats: int = 5) -> float:
    """Best time of one list_objects_v2 call (up to 1,000 keys) under `prefix`."""
    return best_of(repeats, lambda: client.list_objects_v2(Bucket=bucket, Prefix=prefix))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--per-day", type=int, default=1000)
    parser.add_argument("--http-keys", type=int, default=2000, help="keys written by put_object over HTTP")
    parser.add_argument("--write-threads", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="runs of the paginator and of pool's defaults")
    parser.add_argument("--other-threads", default="4,1", help="_walk_s3 thread counts also run, once each")
    args = parser.parse_args()

    total_started = time.perf_counter()
    server = start_server()
    import boto3
    import botocore.config

    from raylib import pool

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"raylib.pool defaults LIST_THREADS={pool.LIST_THREADS}, FAN_OUT_LEVELS={pool.FAN_OUT_LEVELS}")
    client = boto3.client("s3", config=botocore.config.Config(max_pool_connections=args.write_threads))
    client.create_bucket(Bucket=BUCKET)
    keys = keys_of(args.sites, args.days, args.per_day)
    print(f"writing {len(keys):,} keys under s3://{BUCKET}/{PREFIX} ({args.sites} sites x {args.days} days x "
          f"{args.per_day} images, {args.sites} folder markers, 3 keys at the root)", flush=True)
    write_keys(client, keys, args.http_keys, args.write_threads)
    root = f"s3://{BUCKET}/{PREFIX}"

    expected_count = len([key for key in keys if not key.endswith("/")])
    baseline_s, baseline_keys = best_of(args.repeats, lambda: paginator_listing(root))
    assert len(baseline_keys) == expected_count, (len(baseline_keys), expected_count)
    assert baseline_keys == sorted(baseline_keys)
    print(f"one paginator: {baseline_s:.1f} s", flush=True)
    rows = [(f"one paginator (before), best of {args.repeats}", baseline_s)]
    runs = [(pool.LIST_THREADS, args.repeats)] + [(int(t), 1) for t in args.other_threads.split(",") if t]
    for threads, repeats in runs:
        seconds, walked = best_of(repeats, lambda: list(pool._walk_s3(root, threads=threads)))
        assert walked == baseline_keys, f"_walk_s3 threads={threads} listed other keys than the paginator"
        name = f"_walk_s3 threads={threads} fan_out={pool.FAN_OUT_LEVELS}"
        rows.append((name + (f", best of {repeats}" if repeats > 1 else ", 1 run"), seconds))
        print(f"{name}: {seconds:.1f} s", flush=True)
    print("identical key lists: yes (every listing == the paginator's, same order)")

    # Bounds: moto's cost of one page, in this bucket and in a bucket of 1,000 keys.
    pages = -(-len(baseline_keys) // 1000)
    page_big = one_page_seconds(client, BUCKET, PREFIX)
    day_prefix = f"{PREFIX}site=00/day=00/"
    day_big = one_page_seconds(client, BUCKET, day_prefix)
    client.create_bucket(Bucket="listing-bench-small")
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    for n in range(1000):
        s3_backends[DEFAULT_ACCOUNT_ID]["aws"].put_object("listing-bench-small", f"{PREFIX}img_{n:05d}.jpg", b"")
    page_small = one_page_seconds(client, "listing-bench-small", PREFIX)

    print(f"\n{len(baseline_keys):,} keys listed:")
    print(f"{'listing':<46} {'seconds':>8} {'keys/s':>10} {'/ baseline time':>16} {'speed-up':>9}")
    for name, seconds in rows:
        print(f"{name:<46} {seconds:8.2f} {len(baseline_keys) / seconds:10,.0f} {seconds / baseline_s:16.3f} "
              f"{baseline_s / seconds:8.2f}x")
    print(f"\nbounds: one page (1,000 keys) from a 1,000-key bucket {page_small * 1e3:.1f} ms; x {pages} pages = "
          f"{page_small * pages:.2f} s ({len(baseline_keys) / (page_small * pages):,.0f} keys/s): the paginator's "
          f"floor if a page cost what it costs in a small bucket")
    print(f"        one page of the {len(baseline_keys):,}-key prefix {page_big * 1e3:.1f} ms (x {pages} = "
          f"{page_big * pages:.2f} s); one day= prefix ({args.per_day} keys) in the big bucket "
          f"{day_big * 1e3:.1f} ms (x {args.sites * args.days} prefixes = {day_big * args.sites * args.days:.2f} s"
          f" of requests for _walk_s3's leaves, before its {1 + args.sites} delimiter requests)")
    print(f"total run time {time.perf_counter() - total_started:.0f} s")
    server.stop()


if __name__ == "__main__":
    main()
