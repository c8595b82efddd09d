"""A real S3-compatible server on loopback for the tests: moto's standalone server.

One server per test session on a free port (stopped at the end); each test gets its own
buckets (unique names) and the AWS environment variables pointing at the server. ``boto3``
(moto's own dependency) is the independent client the tests check the store with.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

ACCESS_KEY = "moto-test-key"
SECRET_KEY = "moto-test-secret"
REGION = "us-east-1"


@attrs.define
class S3Server:
    """The running server and a boto3 client on it."""

    endpoint: str
    client: Any

    def bucket(self, prefix: str = "b") -> str:
        """A new, empty bucket with a unique name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=body)

    def get(self, bucket: str, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=bucket, Key=key)["Body"].read())

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def incomplete_uploads(self, bucket: str) -> list[str]:
        """Multipart uploads started and neither completed nor aborted."""
        found = self.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return [u["Key"] for u in found]

    def environment(self) -> dict[str, str]:
        """The AWS variables a subprocess needs to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
        }


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's server on 127.0.0.1, a free port (skipped when moto is not installed)."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )
        yield S3Server(endpoint, client)
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The session's server, with this test's AWS environment pointing at it."""
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    return s3_server
