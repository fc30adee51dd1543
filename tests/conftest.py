"""Shared fixtures: one local Ray per test session, a real moto S3 server on 127.0.0.1.

The fake AWS variables are set at import time, before any Ray worker starts, so Ray workers inherit
the endpoint and keys and plain s3:// URIs work everywhere (pyarrow, Ray Data, Ray Train, boto3).
"""
from __future__ import annotations

import os
import socket

import pytest

from raylib.runtime import LOCAL_RAY_ENV


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


S3_PORT = _free_port()
FAKE_ACCESS_KEY = "AKIAFAKETESTKEY00001"
FAKE_SECRET_KEY = "fake-secret-never-in-logs-0123456789abcdef"
os.environ.update(
    {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
        "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "RAY_DEDUP_LOGS": "0",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    }
)
os.environ.update(LOCAL_RAY_ENV)  # every Ray of the tests is local: the session's, Clusters', `ray start`'s


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint (moto's server) over HTTP on 127.0.0.1; yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield os.environ["AWS_ENDPOINT_URL"]
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh bucket per test; yields its s3:// URI."""
    import boto3

    name = "t-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40].strip("-")
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture
def ray_session():
    """The local Ray of the test session (2 CPUs, like CI), started on first use and kept running.

    Function-scoped only so that multi-node tests (`ray.cluster_utils.Cluster`), which shut it down
    for their own cluster, get it back for the next test."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run where CUDA is; elsewhere (CI) they are skipped, and each has a CPU twin."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; the CPU twin of this path runs in CI")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
