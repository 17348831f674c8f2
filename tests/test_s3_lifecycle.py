"""`tusserver s3-lifecycle`: the printed lifecycle configuration has exactly the rules the
configuration calls for, and moto (server mode) accepts it as printed and gives it back."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import boto3
import pytest

from tusserver.cli import main
from tusserver.logs import _CHATTY_LIBRARIES

ABORT = {
    "ID": "tusserver-abort-incomplete-multipart-uploads",
    "Status": "Enabled",
    "Filter": {"Prefix": ""},
    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
}


def state_rule(prefix: str, days: int) -> dict:
    rule = {"ID": "tusserver-expire-stale-state", "Status": "Enabled", "Filter": {"Prefix": prefix}}
    return {**rule, "Expiration": {"Days": days}}


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("TUSSERVER_"):
            monkeypatch.delenv(name)
    # main() sets up logging for its own process: the tests after these must not inherit it.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    chatty = {name: logging.getLogger(name).level for name in _CHATTY_LIBRARIES}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in chatty.items():
        logging.getLogger(name).setLevel(old)
    logging.captureWarnings(False)


def run(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main(["s3-lifecycle", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out else None), err


def apply(endpoint: str, bucket: str, rules: dict) -> list[dict]:
    """Put the configuration on the bucket as the operator would, and read it back."""
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=rules)
    return s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]


def test_expiring_finished_uploads_adds_a_state_rule_of_expire_after_plus_a_day(
    clean_env, capsys, moto_endpoint, bucket
):
    # 25 hours round up to 2 days, plus 1.
    code, rules, _ = run(capsys, "--s3-prefix", "uploads/", "--expire-finished", "--expire-after", "90000")
    assert code == 0
    assert rules == {"Rules": [ABORT, state_rule("uploads/", 3)]}
    assert apply(moto_endpoint, bucket, rules) == rules["Rules"]


def test_without_expire_finished_only_incomplete_uploads_are_aborted(clean_env, capsys, moto_endpoint, bucket):
    code, rules, _ = run(capsys, "--s3-prefix", "uploads/", "--abort-after-days", "3")
    assert code == 0
    assert rules == {"Rules": [{**ABORT, "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 3}}]}
    assert apply(moto_endpoint, bucket, rules) == rules["Rules"]


def test_expire_state_days_given_adds_the_rule(clean_env, capsys, moto_endpoint, bucket):
    code, rules, _ = run(capsys, "--s3-prefix", "t/", "--expire-state-days", "30", "--expire-after", "none")
    assert (code, rules) == (0, {"Rules": [ABORT, state_rule("t/", 30)]})
    assert apply(moto_endpoint, bucket, rules) == rules["Rules"]
    # Uploads that never expire: nothing under the prefix is stale by age.
    never = run(capsys, "--s3-prefix", "t/", "--expire-finished", "--expire-after", "none")
    assert never[:2] == (0, {"Rules": [ABORT]})
    # Less than a day still waits one whole day (S3 counts whole days).
    assert run(capsys, "--s3-prefix", "t/", "--expire-finished", "--expire-after", "60")[1] == {
        "Rules": [ABORT, state_rule("t/", 2)]
    }


def test_an_empty_state_prefix_is_expired_only_in_a_dedicated_bucket(clean_env, capsys):
    code, rules, err = run(capsys, "--expire-finished")
    assert (code, rules) == (2, None)
    assert "state prefix is empty" in err and "s3_dedicated_bucket" in err
    code, rules, _ = run(capsys, "--expire-finished", "--s3-dedicated-bucket")
    assert (code, rules) == (0, {"Rules": [ABORT, state_rule("", 2)]})


@pytest.mark.parametrize("args", [["--abort-after-days", "0"], ["--s3-prefix", "p/", "--expire-state-days", "0"]])
def test_days_below_one_are_refused(clean_env, capsys, args):
    code, rules, err = run(capsys, *args)
    assert (code, rules) == (2, None) and "must be at least 1" in err


def test_the_command_prints_only_json_on_stdout(tmp_path, moto_endpoint, bucket):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSSERVER_")}
    config = tmp_path / "tusserver.toml"
    config.write_text(
        'store = "s3"\ns3_bucket = "b"\ns3_prefix = "up/"\nexpire_finished = true\nexpire_after = 172800\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "tusserver", "s3-lifecycle", "--config", str(config), "--abort-after-days", "2"],
        cwd=tmp_path,
        env={**env, "TUSSERVER_LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    rules = json.loads(result.stdout)
    assert rules == {
        "Rules": [{**ABORT, "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2}}, state_rule("up/", 3)]
    }
    assert apply(moto_endpoint, bucket, rules) == rules["Rules"]


def test_help_says_what_each_rule_does(clean_env, capsys):
    with pytest.raises(SystemExit):
        main(["s3-lifecycle", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "put-bucket-lifecycle-configuration" in shown
    assert "abort incomplete multipart uploads --abort-after-days after they start, in the whole bucket" in shown
    assert "expire every object under the state prefix" in shown
    assert "expire_after in whole days, rounded up, plus 1 (at least 1)" in shown
