"""Config loading: precedence CLI > env > file > defaults, and clear start-up errors."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from tusserver.cli import build_parser
from tusserver.config import Config
from tusserver.load import ConfigError, field_specs, load_config, parse_text, service_links
from tusserver.sizes import parse_size

ROOT = Path(__file__).resolve().parent.parent


def specs() -> dict:
    return {spec.name: spec for spec in field_specs()}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tusserver.toml"
    path.write_text(text)
    return str(path)


def cli_values(*argv: str) -> dict:
    args = vars(build_parser().parse_args(list(argv)))
    args.pop("command", None)
    args.pop("config", None)
    return args


def test_defaults_without_any_source():
    config = load_config(env={})
    assert (config.host, config.port, config.base_path) == ("127.0.0.1", 1080, "/files/")
    assert (config.store, config.file_dir) == ("file", "./data")
    assert config == Config()


def test_file_overrides_defaults(tmp_path):
    path = write(tmp_path, 'port = 2000\nhost = "0.0.0.0"\nmax_size = "5MiB"\ncors_origins = ["https://a.example"]\n')
    config = load_config(env={}, config_file=path)
    assert (config.port, config.host, config.max_size) == (2000, "0.0.0.0", 5 << 20)
    assert config.cors_origins == ["https://a.example"]
    assert config.base_path == "/files/"


def test_env_overrides_file_and_cli_overrides_env(tmp_path):
    path = write(tmp_path, 'port = 2000\nhost = "10.0.0.1"\nfile_dir = "/from-file"\n')
    env = {"TUSSERVER_PORT": "3000", "TUSSERVER_HOST": "10.0.0.2"}
    config = load_config(cli=cli_values("--port", "4000"), env=env, config_file=path)
    assert config.port == 4000  # CLI
    assert config.host == "10.0.0.2"  # env
    assert config.file_dir == "/from-file"  # file


def test_config_file_can_come_from_the_environment(tmp_path):
    path = write(tmp_path, "port = 2001\n")
    assert load_config(env={"TUSSERVER_CONFIG": path}).port == 2001


def test_env_values_of_every_kind_are_parsed():
    env = {
        "TUSSERVER_BEHIND_PROXY": "true",
        "TUSSERVER_DOWNLOADS": "0",
        "TUSSERVER_CORS_ORIGINS": "https://a.example, https://b.example",
        "TUSSERVER_LOCK_TIMEOUT": "1.5",
        "TUSSERVER_S3_PART_SIZE": "32MiB",
        "TUSSERVER_READ_TIMEOUT": "none",
        "TUSSERVER_MAX_SIZE": "1000",
    }
    config = load_config(env=env)
    assert config.behind_proxy is True
    assert config.downloads is False
    assert config.cors_origins == ["https://a.example", "https://b.example"]
    assert config.lock_timeout == 1.5
    assert config.s3_part_size == 32 << 20
    assert config.read_timeout is None
    assert config.max_size == 1000


def test_cli_flags_cover_bools_lists_and_sizes():
    values = cli_values(
        "--no-downloads", "--behind-proxy", "--cors-origins", "x,y", "--max-size", "1GiB", "--store", "s3"
    )
    assert values == {
        "downloads": False,
        "behind_proxy": True,
        "cors_origins": ["x", "y"],
        "max_size": 1 << 30,
        "store": "s3",
    }


def test_every_config_field_has_a_flag():
    flags = {a.dest for a in build_parser()._actions}
    assert {f.name for f in dataclasses.fields(Config)} <= flags


def test_unknown_file_key_is_an_error_naming_it(tmp_path):
    path = write(tmp_path, "prot = 1080\n")
    with pytest.raises(ConfigError, match=r"unknown key 'prot' .*did you mean 'port'"):
        load_config(env={}, config_file=path)


def test_unknown_env_variable_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="unknown environment variable TUSSERVER_PROT"):
        load_config(env={"TUSSERVER_PROT": "1"})


def test_other_env_variables_are_ignored():
    assert load_config(env={"PORT": "1", "TUSSERVERX": "1"}) == Config()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('port = "1080"', r"port in .*: expected an integer, got str '1080'"),
        ("port = 1.5", r"port in .*: expected an integer, got float"),
        ("downloads = 1", r"downloads in .*: expected true or false, got int"),
        ("host = 1", r"host in .*: expected a string, got int"),
        ("cors_origins = [1]", r"cors_origins in .*: expected a list of strings"),
        ('max_size = "5 potatoes"', r"max_size in .*: expected a size like"),
        ("max_size = true", r"max_size in .*: expected a size"),
    ],
)
def test_wrong_type_in_file_is_an_error_naming_the_key(tmp_path, toml, message):
    path = write(tmp_path, toml + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(env={}, config_file=path)


def test_wrong_type_in_env_is_an_error_naming_the_variable():
    with pytest.raises(ConfigError, match=r"TUSSERVER_PORT: expected an integer, got 'abc'"):
        load_config(env={"TUSSERVER_PORT": "abc"})
    with pytest.raises(ConfigError, match=r"TUSSERVER_DOWNLOADS: expected true or false, got 'maybe'"):
        load_config(env={"TUSSERVER_DOWNLOADS": "maybe"})


def test_invalid_toml_is_an_error(tmp_path):
    path = write(tmp_path, "port = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(env={}, config_file=path)


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(env={}, config_file=str(tmp_path / "nope.toml"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TUSSERVER_STORE": "ftp"}, "store must be one of file, s3, got 'ftp'"),
        ({"TUSSERVER_STORE": "s3"}, "s3_bucket is not set"),
        ({"TUSSERVER_PORT": "70000"}, "port must be 0..65535"),
        ({"TUSSERVER_BASE_PATH": "files"}, "base_path must start with '/'"),
        ({"TUSSERVER_LOG_FORMAT": "xml"}, "log_format must be one of text, json"),
        ({"TUSSERVER_LOCK_TIMEOUT": "-1"}, "lock_timeout must not be negative"),
        ({"TUSSERVER_S3_PART_SIZE": "1MiB"}, r"s3_part_size \(1048576\) must be at least s3_min_part_size"),
        ({"TUSSERVER_PUBLIC_URL": "https://a.example/x"}, "public_url must be scheme://host"),
        ({"TUSSERVER_HOOKS_QUEUE_SIZE": "0"}, "hooks_queue_size must be at least 1, got 0"),
        ({"TUSSERVER_HOOKS_WORKERS": "0"}, "hooks_workers must be at least 1, got 0"),
    ],
)
def test_invalid_values_are_rejected_once_at_load(env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_base_path_gets_its_trailing_slash():
    assert load_config(env={"TUSSERVER_BASE_PATH": "/uploads"}).base_path == "/uploads/"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("1048576", 1 << 20),
        ("5MiB", 5 << 20),
        ("5mib", 5 << 20),
        ("1GiB", 1 << 30),
        ("2 KiB", 2048),
        ("1.5MiB", 3 << 19),
        ("10MB", 10_000_000),
        ("1k", 1000),
        ("2TiB", 2 << 40),
    ],
)
def test_sizes_accept_bytes_and_suffixes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    ["", "MiB", "-1", "5 MiBs", "1.5", "0.5KiB0", "5XB", "1.0000000000000000001KiB", "1." + "0" * 5000 + "1KiB"],
)
def test_bad_sizes_are_rejected(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("9007199254740993", 9007199254740993),  # 2**53 + 1: a float makes it ...992
        ("1.5GiB", 1610612736),
        ("0.001KB", 1),
        ("4503599627370497.5KiB", 4611686018427389440),  # whole, but a float rounds the .5 away
        ("9223372036854775807", (1 << 63) - 1),
        ("0" * 5000 + "1." + "0" * 5000 + "KiB", 1024),
        ("0.0000000000009094947017729282379150390625TiB", 1),  # 2**-40 TiB: 40 decimals
    ],
)
def test_sizes_are_parsed_exactly(text, size):
    assert parse_size(text) == size


HUGE = "1" * 400


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"env": {"TUSSERVER_MAX_SIZE": HUGE}}, r"TUSSERVER_MAX_SIZE: '1{40}'\.\.\. \(400 characters\) is too large"),
        ({"env": {"TUSSERVER_S3_PART_SIZE": "9" * 5000 + "MiB"}}, r"TUSSERVER_S3_PART_SIZE: .* is too large"),
        ({"env": {"TUSSERVER_MAX_SIZE": "8EiB"}}, r"TUSSERVER_MAX_SIZE: expected a size like"),
        ({"env": {"TUSSERVER_MAX_SIZE": "9223372036854775808"}}, "TUSSERVER_MAX_SIZE: .* is too large"),
        ({"file": f'max_size = "{HUGE}"'}, r"max_size in .*: '1{40}'\.\.\. \(400 characters\) is too large"),
        ({"file": f"max_size = {HUGE}"}, "max_size is too large: at most 9223372036854775807"),
        ({"file": f"max_metadata_count = {HUGE}"}, "max_metadata_count is too large"),
        ({"file": f"lock_timeout = {HUGE}"}, r"lock_timeout in .*: expected a number, got int 1{40}\.\.\. \(400 "),
        ({"file": "lock_timeout = nan"}, r"lock_timeout in .*: expected a number, got float nan"),
        ({"file": "read_timeout = inf"}, r"read_timeout in .*: expected a number or \"none\", got float inf"),
        ({"env": {"TUSSERVER_READ_TIMEOUT": "inf"}}, r"TUSSERVER_READ_TIMEOUT: expected a number or \"none\""),
        ({"env": {"TUSSERVER_HOOKS_TIMEOUT": "1e400"}}, "TUSSERVER_HOOKS_TIMEOUT: expected a number, got '1e400'"),
        ({"cli": ["--lock-lease", "nan"]}, None),
    ],
)
def test_huge_or_non_finite_values_are_config_errors_naming_the_key(tmp_path, source, message):
    if "cli" in source:  # argparse reports it, naming the flag, and exits 2
        with pytest.raises(SystemExit) as exited:
            cli_values(*source["cli"])
        assert exited.value.code == 2
        return
    path = write(tmp_path, source["file"] + "\n") if "file" in source else None
    with pytest.raises(ConfigError, match=message):
        load_config(env=source.get("env", {}), config_file=path)


@pytest.mark.parametrize(
    ("key", "too_low", "lowest", "message"),
    [
        ("lock_lease", "0", "1", "lock_lease must be at least 1 second, got 0.0"),
        ("lock_lease", "0.5", "1.0", "lock_lease must be at least 1 second, got 0.5"),
        ("cleanup_interval", "0", "1", "cleanup_interval must be at least 1 second, got 0.0"),
        ("s3_min_part_size", "5242879", "5MiB", "s3_min_part_size must be at least 5MiB, the smallest part S3 accepts"),
        ("s3_min_part_size", "1MiB", "5242880", "s3_min_part_size must be at least 5MiB"),
    ],
)
def test_settings_with_a_floor_refuse_values_below_it(key, too_low, lowest, message):
    env = "TUSSERVER_" + key.upper()
    with pytest.raises(ConfigError, match=message):
        load_config(env={env: too_low})
    assert getattr(load_config(env={env: lowest}), key) == parse_text(specs()[key], lowest)


def test_s3_part_size_is_at_most_what_s3_accepts():
    assert load_config(env={"TUSSERVER_S3_PART_SIZE": "5GiB"}).s3_part_size == 5 << 30
    s3 = {"TUSSERVER_STORE": "s3", "TUSSERVER_S3_BUCKET": "b", "TUSSERVER_S3_PART_SIZE": "5GiB"}
    with pytest.raises(ConfigError, match="temp_max_size .* must be at least twice s3_part_size"):
        load_config(env=s3)  # the spool must hold two such parts
    assert load_config(env={**s3, "TUSSERVER_TEMP_MAX_SIZE": "10GiB"}).s3_part_size == 5 << 30
    with pytest.raises(ConfigError, match="s3_part_size must be at most 5GiB"):
        load_config(env={"TUSSERVER_S3_PART_SIZE": str((5 << 30) + 1)})


def test_defaults_are_limited():
    config = Config()
    assert (config.max_size, config.expire_after, config.max_concurrent_uploads) == (10 << 30, 86400.0, 200)
    assert (config.max_metadata_size, config.max_metadata_count) == (4096, 32)


LIMITED_BY_DEFAULT = ["max_size", "expire_after", "max_concurrent_uploads", "max_metadata_size", "max_metadata_count"]


@pytest.mark.parametrize("key", LIMITED_BY_DEFAULT)
def test_none_unsets_each_default_limit_from_every_source(tmp_path, key):
    assert getattr(load_config(env={"TUSSERVER_" + key.upper(): "none"}), key) is None
    assert getattr(load_config(env={}, config_file=write(tmp_path, f'{key} = "none"\n')), key) is None
    assert getattr(load_config(cli=cli_values("--" + key.replace("_", "-"), "none"), env={}), key) is None


def test_example_config_documents_every_key_with_its_default():
    text = (ROOT / "config.example.toml").read_text()
    mentioned = set(re.findall(r"^#? ?([a-z0-9_]+) = ", text, re.MULTILINE))
    assert mentioned == {spec.name for spec in field_specs()}
    # Uncommented lines are the defaults, so loading the example changes nothing.
    assert load_config(env={}, config_file=str(ROOT / "config.example.toml")) == Config()


def example_comments() -> dict[str, str]:
    """Each key of config.example.toml with the comment lines just above it, as one line."""
    comments: dict[str, str] = {}
    block: list[str] = []
    for line in (ROOT / "config.example.toml").read_text().splitlines():
        key = re.match(r"^#? ?([a-z0-9_]+) = ", line)
        if key:
            comments[key.group(1)] = " ".join(" ".join(block).split())
            block = []
        elif line.startswith("# ") and not line.startswith("# ---"):
            block.append(line[2:])
        else:
            block = []
    return comments


def test_every_key_has_one_description_shown_by_help_and_in_the_example_file():
    comments = example_comments()
    parser = build_parser()
    flags = {action.dest: action for action in parser._actions}
    shown = " ".join(parser.format_help().split())
    for spec in field_specs():
        described = " ".join(spec.help.split())
        assert len(described) > 10 and described.endswith("."), spec.name  # a sentence, not a stub
        assert flags[spec.name].help.startswith(spec.help) and described in shown, spec.name
        # The example's comment on the key starts with the same description (it may add more).
        assert comments[spec.name].startswith(described), (spec.name, comments[spec.name])


def test_wrong_type_of_a_secret_key_does_not_echo_the_value(tmp_path):
    assert [spec.name for spec in field_specs() if spec.secret] == ["auth_secret"]
    path = write(tmp_path, "auth_secret = 123456789\n")
    with pytest.raises(ConfigError) as caught:
        load_config(env={}, config_file=path)
    assert "expected a string" in str(caught.value) and "123456789" not in str(caught.value)


# What the kubelet injects for a Service "tusserver" (ports 1080 "http" and 9090 "metrics")
# and a Service "tusserver-redis" (port 6379 "redis", dual-stack IPv6 address).
SERVICE_LINKS = {
    "TUSSERVER_SERVICE_HOST": "10.0.0.1",
    "TUSSERVER_SERVICE_PORT": "1080",
    "TUSSERVER_SERVICE_PORT_HTTP": "1080",
    "TUSSERVER_SERVICE_PORT_METRICS": "9090",
    "TUSSERVER_PORT": "tcp://10.0.0.1:1080",
    "TUSSERVER_PORT_1080_TCP": "tcp://10.0.0.1:1080",
    "TUSSERVER_PORT_1080_TCP_PROTO": "tcp",
    "TUSSERVER_PORT_1080_TCP_PORT": "1080",
    "TUSSERVER_PORT_1080_TCP_ADDR": "10.0.0.1",
    "TUSSERVER_PORT_9090_UDP": "udp://10.0.0.1:9090",
    "TUSSERVER_PORT_9090_UDP_PROTO": "udp",
    "TUSSERVER_PORT_9090_UDP_PORT": "9090",
    "TUSSERVER_PORT_9090_UDP_ADDR": "10.0.0.1",
    "TUSSERVER_REDIS_SERVICE_HOST": "fd00::2",
    "TUSSERVER_REDIS_SERVICE_PORT": "6379",
    "TUSSERVER_REDIS_SERVICE_PORT_REDIS": "6379",
    "TUSSERVER_REDIS_PORT": "tcp://[fd00::2]:6379",
    "TUSSERVER_REDIS_PORT_6379_TCP": "tcp://[fd00::2]:6379",
    "TUSSERVER_REDIS_PORT_6379_TCP_PROTO": "tcp",
    "TUSSERVER_REDIS_PORT_6379_TCP_PORT": "6379",
    "TUSSERVER_REDIS_PORT_6379_TCP_ADDR": "fd00::2",
}


def test_kubernetes_service_links_are_ignored():
    assert service_links(SERVICE_LINKS) == sorted(SERVICE_LINKS)
    assert load_config(env=SERVICE_LINKS) == Config()
    # Real keys beside them still apply; the port is an integer, a link is a URL.
    config = load_config(env={**SERVICE_LINKS, "TUSSERVER_HOST": "0.0.0.0", "TUSSERVER_MAX_SIZE": "1GiB"})
    assert (config.host, config.port, config.max_size) == ("0.0.0.0", 1080, 1 << 30)
    assert load_config(env={"TUSSERVER_PORT": "2000"}).port == 2000
    assert service_links({"TUSSERVER_PORT": "2000", "TUSSERVER_HOST": "10.0.0.1"}) == []


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        # Neither a key nor a value the kubelet would write under that name.
        ("TUSSERVER_PORT", "tcp://tusserver:1080", "TUSSERVER_PORT: expected an integer"),
        ("TUSSERVER_REDIS_PORT", "6379", "unknown environment variable TUSSERVER_REDIS_PORT"),
        ("TUSSERVER_PORT_1080_TCP_PORT", "1081", "unknown environment variable"),
        ("TUSSERVER_PORT_1080_TCP", "udp://10.0.0.1:1080", "unknown environment variable"),
        ("TUSSERVER_PORT_1080_TCP_PROTO", "udp", "unknown environment variable"),
        ("TUSSERVER_SERVICE_HOST", "tusserver.default.svc", "unknown environment variable"),
        ("TUSSERVER_SERVICE_PORT", "http", "unknown environment variable"),
        ("TUSSERVER_POTR", "1080", "unknown environment variable TUSSERVER_POTR"),
    ],
)
def test_lookalikes_of_service_links_are_still_errors(name, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env={**SERVICE_LINKS, name: value})
