#!/usr/bin/env python3
"""A real S3 server for tests: moto's server on 127.0.0.1 with request signing enforced.

Starts moto on a free port, creates an IAM user allowed everything on S3, an access key
for it and the bucket(s) named on the command line (these first requests are the only
unauthenticated ones: moto's INITIAL_NO_AUTH_ACTION_COUNT), then prints one JSON line
{"endpoint", "access_key_id", "secret_access_key", "region"} and serves until its
standard input is closed (the test holding the pipe exits or drops it).

Usage: s3-test-server.py BUCKET [BUCKET...]
"""

import json
import os
import socket
import sys

BUCKETS = sys.argv[1:] or ["posthoc-test"]
# IAM: create user, put policy, create key; then one create_bucket per bucket.
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = str(3 + len(BUCKETS))

import boto3  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    region = "us-east-1"
    boot = dict(
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam = boto3.client("iam", **boot)
    iam.create_user(UserName="posthoc")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(
        UserName="posthoc", PolicyName="s3-all", PolicyDocument=json.dumps(policy)
    )
    key = iam.create_access_key(UserName="posthoc")["AccessKey"]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    for bucket in BUCKETS:
        s3.create_bucket(Bucket=bucket)
    print(
        json.dumps(
            {
                "endpoint": endpoint,
                "access_key_id": key["AccessKeyId"],
                "secret_access_key": key["SecretAccessKey"],
                "region": region,
            }
        ),
        flush=True,
    )
    try:
        sys.stdin.read()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
