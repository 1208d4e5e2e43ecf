"""The S3 backend against a real S3-protocol server (moto's, SigV4 checked)
started on 127.0.0.1 by these tests: the C++ storage conformance suite,
throttling retried to success, a wrong secret refused with a clear 403, and
a server that vanishes mid-upload (nothing published)."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from s3_server import FaultProxy, S3Server, start_server

HERE = Path(__file__).resolve().parent
TESTS_BIN = Path(os.environ.get("CKPT_TESTS", HERE.parents[1] / "build" / "default" / "tests" / "ckpt_tests"))
BUCKET = "ckpt-test"


@pytest.fixture(scope="module")
def server():
    s = start_server()
    try:
        s.client().create_bucket(Bucket=BUCKET)
        yield s
    finally:
        s.stop()


def run_suite(server: S3Server, gtest_filter: str, endpoint: str | None = None, **env: str):
    if not TESTS_BIN.exists():
        pytest.fail(f"{TESTS_BIN} is not built (cmake --build --preset default)")
    environ = server.env(CKPT_TEST_S3_ENDPOINT=endpoint or server.endpoint, CKPT_TEST_S3_BUCKET=BUCKET, **env)
    return subprocess.run(
        [str(TESTS_BIN), f"--gtest_filter={gtest_filter}"],
        capture_output=True,
        text=True,
        timeout=240,
        env=environ,
    )


def passed(out: str) -> int:
    m = re.search(r"\[  PASSED  \] (\d+) test", out)
    return int(m.group(1)) if m else 0


def bucket_keys(server: S3Server) -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_conformance_suite_runs_against_the_server(server):
    proc = run_suite(server, "*/StorageConformanceTest.*/s3:*/S3StorageTest.*/s3")
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    # Every conformance case plus the S3-only ones ran: none was skipped.
    assert passed(proc.stdout) >= 18, proc.stdout[-3000:]
    assert "SKIPPED" not in proc.stdout


def test_slowdown_answers_are_retried_to_success(server):
    proxy = FaultProxy(int(server.endpoint.rsplit(":", 1)[1]))
    proxy.slowdown = 6
    proc = run_suite(server, "*/S3StorageTest.MultipartOutOfOrderWritesRoundTrip/s3", endpoint=proxy.endpoint)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert passed(proc.stdout) == 1
    assert proxy.injected == 6  # each one was answered 503 SlowDown and retried
    proxy.down()


@pytest.mark.parametrize("status", [500, 502])
def test_5xx_answers_are_retried_to_success_and_fail_once_the_attempts_are_spent(server, status):
    proxy = FaultProxy(int(server.endpoint.rsplit(":", 1)[1]))
    proxy.errors = [status] * 3
    proc = run_suite(server, "*/S3StorageTest.MultipartOutOfOrderWritesRoundTrip/s3", endpoint=proxy.endpoint)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert passed(proc.stdout) == 1
    assert proxy.injected == 3 and proxy.errors == []
    # With one attempt a request, the first such answer is the error.
    proxy.errors = [status]
    proc = run_suite(
        server,
        "*/S3StorageTest.MultipartOutOfOrderWritesRoundTrip/s3",
        endpoint=proxy.endpoint,
        CKPT_S3_MAX_ATTEMPTS="1",
    )
    assert proc.returncode != 0
    assert f"HTTP {status}" in proc.stdout and "(after 1 attempts)" in proc.stdout, proc.stdout[-4000:]
    proxy.down()


def test_a_stalled_transfer_times_out_and_is_retried(server):
    proxy = FaultProxy(int(server.endpoint.rsplit(":", 1)[1]))

    def stalled(n: int) -> None:  # the proxy notices the client's close within a second
        deadline = time.monotonic() + 10
        while proxy.stalled < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.stalled == n

    proxy.stall = 2
    t0 = time.monotonic()
    proc = run_suite(
        server,
        "*/S3StorageTest.MultipartOutOfOrderWritesRoundTrip/s3",
        endpoint=proxy.endpoint,
        CKPT_S3_LOW_SPEED_TIMEOUT="1",
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert passed(proc.stdout) == 1
    assert time.monotonic() - t0 >= 2  # two connections were each given up after a second
    stalled(2)
    # With one attempt a request, the stall is the error.
    proxy.stall = 1
    proc = run_suite(
        server,
        "*/S3StorageTest.MultipartOutOfOrderWritesRoundTrip/s3",
        endpoint=proxy.endpoint,
        CKPT_S3_LOW_SPEED_TIMEOUT="1",
        CKPT_S3_MAX_ATTEMPTS="1",
    )
    assert proc.returncode != 0
    assert "connection failed: Timeout was reached" in proc.stdout, proc.stdout[-4000:]
    stalled(3)
    proxy.down()


def test_a_wrong_secret_is_a_clear_403_and_nothing_is_written(server):
    before = bucket_keys(server)
    proc = run_suite(
        server, "*/StorageConformanceTest.WriteThenReadBack/s3", AWS_SECRET_ACCESS_KEY="not-the-secret"
    )
    assert proc.returncode != 0
    assert "HTTP 403" in proc.stdout, proc.stdout[-4000:]
    assert bucket_keys(server) == before


def test_a_server_gone_mid_upload_publishes_nothing_and_the_next_write_succeeds(server):
    proxy = FaultProxy(int(server.endpoint.rsplit(":", 1)[1]))
    before = bucket_keys(server)

    def cut() -> None:
        # Let the upload start, then the server vanishes for longer than the
        # retries last.
        while proxy.requests < 4:
            time.sleep(0.01)
        proxy.down()

    t = threading.Thread(target=cut)
    t.start()
    proc = run_suite(
        server,
        "*/S3StorageTest.MultipartOutOfOrderWritesRoundTrip/s3",
        endpoint=proxy.endpoint,
        CKPT_S3_MAX_ATTEMPTS="2",
    )
    t.join()
    assert proc.returncode != 0
    assert "connection failed" in proc.stdout, proc.stdout[-4000:]
    # Nothing new is visible but the test's empty directory marker.
    assert [k for k in bucket_keys(server) if not k.endswith("/")] == [
        k for k in before if not k.endswith("/")
    ]
    proxy.up()
    proc = run_suite(server, "*/S3StorageTest.MultipartOutOfOrderWritesRoundTrip/s3", endpoint=proxy.endpoint)
    assert proc.returncode == 0, proc.stdout[-6000:]
    proxy.down()


# ---- Through the Python package (ckpt.save / load / consolidate) ----


@pytest.fixture
def s3_env(server, monkeypatch):
    for k, v in server.env().items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return server


def test_a_save_on_four_ranks_loads_resharded_on_two_reading_only_the_needed_bytes(s3_env, ranks):
    url = f"s3://{BUCKET}/ranks/step_1"
    out = ranks(4, "s3_job.py", "save", url)
    assert out[0].count("SAVED rank") == 4
    keys = [k for k in bucket_keys(s3_env) if k.startswith("ranks/step_1/")]
    assert "ranks/step_1/ckpt_manifest.json" in keys
    assert sum(k.endswith(".safetensors") for k in keys) == 4
    out = ranks(2, "s3_job.py", "load", url)
    assert out[0].count("LOADED rank") == 2, out[0][-3000:]


def test_consolidation_from_and_to_the_bucket(s3_env, tmp_path):
    import ckpt
    import torch
    from safetensors.torch import load_file

    sd = {
        "a": torch.arange(1000, dtype=torch.float32).reshape(10, 100),
        "b": torch.ones(7, dtype=torch.bfloat16),
    }
    ckpt.save(sd, f"s3://{BUCKET}/cons/in")
    ckpt.consolidate(f"s3://{BUCKET}/cons/in", f"s3://{BUCKET}/cons/out")
    keys = [k for k in bucket_keys(s3_env) if k.startswith("cons/out/")]
    shards = [k for k in keys if k.endswith(".safetensors")]
    assert shards and "cons/out/model.safetensors.index.json" in keys, keys
    got: dict = {}
    for i, k in enumerate(shards):
        local = tmp_path / f"{i}.safetensors"
        s3_env.client().download_file(BUCKET, k, str(local))
        got.update(load_file(str(local)))
    assert torch.equal(got["a"], sd["a"]) and torch.equal(got["b"], sd["b"])
    # The output is committed: consolidating into it again is refused.
    with pytest.raises(ckpt.AlreadyExistsError):
        ckpt.consolidate(f"s3://{BUCKET}/cons/in", f"s3://{BUCKET}/cons/out")


def test_an_uncommitted_prefix_is_not_a_checkpoint_and_the_next_save_replaces_it(s3_env):
    import ckpt
    import torch

    sd = {"w": torch.arange(64, dtype=torch.float32)}
    ckpt.save(sd, f"s3://{BUCKET}/dead/x")
    # A save that died before its commit: every object but the manifest.
    s3_env.client().delete_object(Bucket=BUCKET, Key="dead/x/ckpt_manifest.json")
    got = {"w": torch.zeros(64)}
    with pytest.raises(ckpt.NotFoundError, match="never committed"):
        ckpt.load(got, f"s3://{BUCKET}/dead/x")
    ckpt.save({"w": sd["w"] * 2}, f"s3://{BUCKET}/dead/x")
    ckpt.load(got, f"s3://{BUCKET}/dead/x")
    assert torch.equal(got["w"], sd["w"] * 2)


def test_an_msc_url_resolves_through_the_msc_config(s3_env, tmp_path, monkeypatch):
    import ckpt
    import torch

    config = tmp_path / "msc.yaml"
    config.write_text(
        "profiles:\n"
        "  training:\n"
        "    storage_provider:\n"
        "      type: s3\n"
        "      options:\n"
        f"        base_path: {BUCKET}/msc-base\n"
        f"        endpoint_url: {s3_env.endpoint}\n"
        "        region_name: us-east-1\n"
        "    credentials_provider:\n"
        "      type: S3Credentials\n"
        "      options:\n"
        f"        access_key: {s3_env.access_key}\n"
        f"        secret_key: {s3_env.secret_key}\n"
    )
    monkeypatch.setenv("MSC_CONFIG", str(config))
    # The profile's own credentials and endpoint are used, not the environment's.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    sd = {"w": torch.arange(12, dtype=torch.int64).reshape(3, 4)}
    ckpt.save(sd, "msc://training/run1/step_5")
    assert "msc-base/run1/step_5/ckpt_manifest.json" in bucket_keys(s3_env)
    got = {"w": torch.zeros(3, 4, dtype=torch.int64)}
    ckpt.load(got, "msc://training/run1/step_5")
    assert torch.equal(got["w"], sd["w"])
    with pytest.raises(ckpt.NotFoundError, match="profile 'nope' is not in the MSC config"):
        ckpt.load(got, "msc://nope/x")


def test_the_save_fails_on_every_rank_when_the_server_vanishes_and_recovers(server, ranks, tmp_path):
    proxy = FaultProxy(int(server.endpoint.rsplit(":", 1)[1]))
    flags = tmp_path / "flags"
    flags.mkdir()

    def cut() -> None:
        while not (flags / "prev_saved").exists():
            time.sleep(0.02)
        start = proxy.bytes_up
        while proxy.bytes_up < start + (12 << 20):  # the next save's parts are on their way
            time.sleep(0.002)
        proxy.down()
        time.sleep(4)  # longer than the retries last
        proxy.up()
        (flags / "server_back").touch()

    t = threading.Thread(target=cut, daemon=True)
    t.start()
    # 5 MiB parts: each rank's 8 MiB shard is a multipart upload.
    env = server.env(
        AWS_ENDPOINT_URL=proxy.endpoint, CKPT_S3_MAX_ATTEMPTS="2", CKPT_S3_PART_SIZE=str(5 << 20)
    )
    old = dict(os.environ)
    os.environ.update(env)
    try:
        out = ranks(4, "s3_job.py", "outage", f"s3://{BUCKET}/out/prev", f"s3://{BUCKET}/out/new", str(flags))
    finally:
        os.environ.clear()
        os.environ.update(old)
        t.join(timeout=10)
        proxy.down()
    print("\n".join(line for line in out[0].splitlines() if "RAISED" in line))
    assert out[0].count("RAISED rank") == 4, out[0][-4000:]
    assert out[0].count("RECOVERED rank") == 4, out[0][-4000:]


def test_checkpointer_lifecycle_runs_against_the_server(server):
    """Reserve, publish, LATEST / LOWEST_VAL, find-latest and retention of the
    C++ Checkpointer with its checkpoint root in the bucket."""
    proc = run_suite(server, "Server/LifecycleTest.*")
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    cases = (
        (HERE.parents[1] / "tests" / "checkpoint" / "lifecycle_test.cc")
        .read_text()
        .count("TEST_P(LifecycleTest,")
    )
    assert passed(proc.stdout) == cases, proc.stdout[-3000:]


def test_the_cli_inspects_verifies_and_consolidates_s3_urls(s3_env):
    import ckpt
    import torch
    from conftest import cli

    sd = {"layer.weight": torch.arange(96, dtype=torch.float32).reshape(8, 12)}
    ckpt.save(sd, f"s3://{BUCKET}/cli/in")
    out = cli("inspect", f"s3://{BUCKET}/cli/in").stdout
    assert "layer.weight" in out, out
    cli("verify", f"s3://{BUCKET}/cli/in")
    cli("consolidate", f"s3://{BUCKET}/cli/in", f"s3://{BUCKET}/cli/out")
    cli("verify", f"s3://{BUCKET}/cli/out")
    assert "cli/out/model.safetensors.index.json" in bucket_keys(s3_env)
    # Damage one object: verify says which and fails.
    key = next(k for k in bucket_keys(s3_env) if k.startswith("cli/in/") and k.endswith(".safetensors"))
    body = bytearray(s3_env.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[-1] ^= 0xFF
    s3_env.client().put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    bad = cli("verify", f"s3://{BUCKET}/cli/in", ok=False)
    assert bad.returncode != 0 and "layer.weight" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    # A local output for an S3 input is refused with a clear message.
    refused = cli("consolidate", f"s3://{BUCKET}/cli/in", "/tmp/ckpt-s3-local-out", ok=False)
    assert "must be on the same storage" in refused.stderr, refused.stderr
