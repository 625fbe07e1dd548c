"""Test support: moto's S3 server (`python -m moto.server`, from moto[server] on PyPI) as a
subprocess on loopback, with SigV4 signatures and IAM policies enforced, so that wrong credentials
are refused as AWS refuses them. Faults in front of it: tests.support.proxy.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from tests.support.http import free_port, wait_http_ok

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
REGION = "us-east-1"
# moto answers the first N requests without checking credentials: the IAM calls that make the
# user below. Every request after them must be signed with that user's key.
_SETUP_ACTIONS = 3
_READ_WRITE = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}


@dataclass(frozen=True)
class S3Server:
    url: str
    access_key: str
    secret_key: str

    def env(self, url: str | None = None) -> dict[str, str]:
        """The AWS settings that point the standard credential chain and boto3 at this server
        (or at `url`, a proxy in front of it), and nowhere else: no files, no instance metadata."""
        return {
            "AWS_ENDPOINT_URL": url or self.url,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }


# Variables of the chain that the environment of a test run might hold: cleared for the tests.
AWS_VARIABLES_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


def admin_client(server: S3Server, checksums: bool = True) -> Any:
    """A client for the test's own uploads, pinned to the server whatever the environment says.

    checksums=False uploads as older SDKs did: no x-amz-checksum-*, only the ETag (the MD5)."""
    config = Config(request_checksum_calculation="when_supported" if checksums else "when_required")
    return boto3.client(
        "s3",
        endpoint_url=server.url,
        region_name=REGION,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=config,
    )


def _make_user(url: str) -> tuple[str, str]:
    iam = boto3.client(
        "iam",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    iam.create_user(UserName="aegis-tests")
    key = iam.create_access_key(UserName="aegis-tests")["AccessKey"]
    iam.put_user_policy(
        UserName="aegis-tests", PolicyName="s3", PolicyDocument=json.dumps(_READ_WRITE)
    )
    return key["AccessKeyId"], key["SecretAccessKey"]


@contextlib.contextmanager
def moto_server() -> Iterator[S3Server]:
    """moto's server on a free loopback port, credentials enforced; always stopped."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_ACTIONS)}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(port, "/moto-api/", START_TIMEOUT_S)
        access_key, secret_key = _make_user(url)
        yield S3Server(url, access_key, secret_key)
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
