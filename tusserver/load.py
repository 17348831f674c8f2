"""Build a Config from a TOML file, TUSSERVER_* environment variables and CLI values.

Precedence is CLI > environment > file > defaults. Every key is checked against the
Config dataclass, so a typo or a wrong type stops the server at start-up, naming the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import Config, GiB, MiB
from .hooks import EVENTS
from .placement import check_template
from .sizes import MAX_INT, parse_size
from .sizes import shown as _shown
from .stores.s3_policy import ObjectPolicy
from .stores.s3_profiles import NAMES as S3_PROFILES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "TUSSERVER_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"  # the config file path, like --config

# Settings that break the server below a floor (a busy loop, locks that expire while held,
# parts S3 refuses at the very end of an upload): (key, lowest value, how it is shown).
_MINIMUMS = (
    ("lock_lease", 1.0, "1 second"),
    ("cleanup_interval", 1.0, "1 second"),
    ("s3_min_part_size", 5 * MiB, "5MiB, the smallest part S3 accepts"),
    ("min_upload_rate_window", 1.0, "1 second"),
    # Counts of workers, slots and queue places: 0 would stop the work, or (a queue) unbound it.
    *(
        (name, 1, "1")
        for name in (
            "workers",
            "s3_upload_concurrency",
            "s3_max_concurrency",
            "max_concurrent_uploads",
            "max_concurrent_downloads",
            "hooks_queue_size",
            "hooks_workers",
            "max_concat_partials",
            "max_finals_per_partial",
            "max_append_size",
        )
    ),
)
_S3_MAX_PART = 5 * GiB  # the largest part S3 accepts
# Fields whose value is one of a few words; the CLI offers them as choices.
CHOICES: dict[str, tuple[str, ...]] = {
    "store": ("file", "s3"),
    "log_format": ("text", "json"),
    "log_level": ("debug", "info", "warning", "error", "critical"),
    "s3_profile": S3_PROFILES,
}


# Kubernetes injects these for every Service in the namespace (unless the pod sets
# enableServiceLinks: false); a Service whose name starts with "tusserver" puts them in
# our prefix. Each pattern goes with the exact form of its value, so that only what the
# kubelet writes is ignored and a typo still stops the server.
_SVC = r"TUSSERVER(?:_[A-Z0-9_]+)?"
_LINK_URL = re.compile(r"(tcp|udp|sctp)://(\[[0-9a-fA-F:.]+\]|[0-9.]+):(\d+)")
_LINK_NAMES = {
    "url": re.compile(_SVC + r"_PORT(?:_(?P<port>\d+)_(?P<proto>TCP|UDP|SCTP))?"),
    "port": re.compile(_SVC + r"_(?:SERVICE_PORT(?:_[A-Z0-9_]+)?|PORT_(?P<port>\d+)_(?:TCP|UDP|SCTP)_PORT)"),
    "proto": re.compile(_SVC + r"_PORT_\d+_(?P<proto>TCP|UDP|SCTP)_PROTO"),
    "addr": re.compile(_SVC + r"_(?:SERVICE_HOST|PORT_\d+_(?:TCP|UDP|SCTP)_ADDR)"),
}


def is_service_link(name: str, value: str) -> bool:
    """Whether NAME=value is a variable the kubelet injects for a Service named tusserver*."""
    kind, port, proto = _link_value(value)
    match = _LINK_NAMES[kind].fullmatch(name) if kind else None
    if match is None:
        return False
    groups = match.groupdict()
    return groups.get("port") in (None, port) and groups.get("proto") in (None, proto)


def _link_value(value: str) -> tuple[str | None, str | None, str | None]:
    """(kind of value, port, protocol) of a service-link value, or Nones."""
    url = _LINK_URL.fullmatch(value)
    if url is not None:
        return ("url", url.group(3), url.group(1).upper()) if _is_ip(url.group(2).strip("[]")) else (None, None, None)
    if value.isdigit() and value.isascii():
        return "port", value, None
    if value in ("tcp", "udp", "sctp"):
        return "proto", None, value.upper()
    return ("addr", None, None) if _is_ip(value) else (None, None, None)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def service_links(env: Mapping[str, str]) -> list[str]:
    """The names of the Kubernetes service-link variables in `env`, which load_config ignores."""
    return sorted(name for name, value in env.items() if is_service_link(name, value))


class ConfigError(ValueError):
    """A configuration problem, worded for the operator."""


@dataclass(frozen=True)
class FieldSpec:
    """How one Config field is written in a file, the environment and on the command line."""

    name: str
    kind: type  # str, int, float, bool or list (of str)
    optional: bool  # None allowed (written as "none" outside TOML, or left out)
    size: bool  # an int byte count that accepts suffixes like 5MiB
    default: Any
    secret: bool = False  # field(repr=False): its value never appears in messages
    help: str = ""  # what the key does, from Config's setting(); --help shows it

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def field_specs() -> list[FieldSpec]:
    """One spec per configurable Config field, in declaration order."""
    hints = typing.get_type_hints(Config)
    specs = []
    for f in dataclasses.fields(Config):
        kind, optional = _unwrap(hints[f.name])
        if kind is None:
            continue  # not expressible as text (callables, objects): embedding only
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            assert f.default_factory is not dataclasses.MISSING  # every field has a default
            default = f.default_factory()
        # Byte counts are named *_size by convention; they accept "5MiB".
        size = kind is int and f.name.endswith(("_size", "_bytes"))
        help_text = f.metadata.get("help", "")
        specs.append(FieldSpec(f.name, kind, optional, size, default, secret=not f.repr, help=help_text))
    return specs


def _unwrap(hint: Any) -> tuple[type | None, bool]:
    args = typing.get_args(hint)
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return None, False
        hint, optional = rest[0], True
    if hint in (str, int, float, bool):
        return hint, optional
    if typing.get_origin(hint) is list and typing.get_args(hint) == (str,):
        return list, optional
    return None, False


def parse_text(spec: FieldSpec, text: str) -> Any:
    """The value of a field written as text (environment or command line)."""
    if spec.optional and text.strip().lower() in ("", "none"):
        return None
    try:
        if spec.size:
            return parse_size(text)
        if spec.kind is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true or false, got {text!r}")
        if spec.kind is list:
            return [item.strip() for item in text.split(",") if item.strip()]
        if spec.kind is int:
            return int(text)
        if spec.kind is float:
            value = float(text)
            if not math.isfinite(value):  # "nan", "inf" and 1e400 parse; "none" is how to say "no limit"
                raise ValueError(text)
            return value
        return text
    except ValueError as exc:
        if spec.kind in (int, float) and not spec.size:
            raise ValueError(f"expected {_describe(spec)}, got {_shown(text)}") from None
        raise ValueError(str(exc)) from None


def parse_toml_value(spec: FieldSpec, value: Any) -> Any:
    """The value of a field as TOML gave it; strings stand in for sizes and "none"."""
    if isinstance(value, str) and spec.optional and value.strip().lower() == "none":
        return None
    if spec.size and isinstance(value, str):
        return parse_size(value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        list: isinstance(value, list) and all(isinstance(item, str) for item in value),
    }[spec.kind]
    if ok and spec.kind is float:
        # TOML writes nan and inf, and float() of a 400-digit integer overflows.
        ok = math.isfinite(value) if isinstance(value, float) else abs(value) <= MAX_INT
    if not ok:
        shown = "" if spec.secret else f" {_shown(value)}"
        raise ValueError(f"expected {_describe(spec)}, got {type(value).__name__}{shown}")
    return float(value) if spec.kind is float else value


def _describe(spec: FieldSpec) -> str:
    text = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list of strings",
    }[spec.kind]
    if spec.size:
        text = 'a size (bytes, or a string like "5MiB")'
    return text + (' or "none"' if spec.optional else "")


def read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def load_config(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Config:
    """Merge defaults < file < environment < CLI into one validated Config.

    `cli` holds already-typed values by field name (only the flags given); `env` is
    usually os.environ; `config_file` falls back to $TUSSERVER_CONFIG."""
    specs = {spec.name: spec for spec in field_specs()}
    env = env or {}
    values: dict[str, Any] = {}

    config_file = config_file or env.get(CONFIG_ENV) or None
    if config_file:
        for key, raw in read_file(config_file).items():
            spec = specs.get(key)
            if spec is None:
                raise ConfigError(f"unknown key {key!r} in {config_file}{_suggest(key, specs)}")
            try:
                values[key] = parse_toml_value(spec, raw)
            except ValueError as exc:
                raise ConfigError(f"{key} in {config_file}: {exc}") from None

    by_env = {spec.env: spec for spec in specs.values()}
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or is_service_link(name, text):
            continue
        spec = by_env.get(name)
        if spec is None:
            raise ConfigError(f"unknown environment variable {name}{_suggest(name, by_env)}")
        try:
            values[spec.name] = parse_text(spec, text)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    for key, value in (cli or {}).items():
        if key not in specs:
            raise ConfigError(f"unknown option {key!r}")
        values[key] = value

    config = Config(**values)
    if config.base_path.startswith("/") and not config.base_path.endswith("/"):
        config.base_path += "/"  # "/files" and "/files/" mean the same collection
    validate(config)
    return config


def _suggest(name: str, known: Mapping[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def validate(config: Config) -> None:
    """Check the values that types alone cannot; raises ConfigError naming the key."""
    for spec in field_specs():
        value = getattr(config, spec.name)
        if spec.kind not in (int, float) or value is None:
            continue
        if spec.kind is float and not math.isfinite(value):
            raise ConfigError(f'{spec.name} must be a finite number, got {value} (use "none" to unset it)')
        if value < 0:
            raise ConfigError(f"{spec.name} must not be negative, got {value}")
        if value > MAX_INT:
            raise ConfigError(f"{spec.name} is too large: at most {MAX_INT}")
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"port must be 0..65535, got {config.port}")
    if not config.base_path.startswith("/"):
        raise ConfigError(f"base_path must start with '/', got {config.base_path!r}")
    for name, allowed in CHOICES.items():
        if getattr(config, name) not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}")
    if config.store == "s3" and not config.s3_bucket:
        raise ConfigError("store is 's3' but s3_bucket is not set")
    if config.public_url is not None and not re.match(r"https?://[^/]+/?$", config.public_url):
        raise ConfigError(f"public_url must be scheme://host[:port] only, got {config.public_url!r}")
    for name, lowest, shown in _MINIMUMS:
        if getattr(config, name) is not None and getattr(config, name) < lowest:
            raise ConfigError(f"{name} must be at least {shown}, got {getattr(config, name)}")
    if config.s3_part_size < config.s3_min_part_size:
        raise ConfigError(
            f"s3_part_size ({config.s3_part_size}) must be at least s3_min_part_size ({config.s3_min_part_size})"
        )
    if config.s3_max_parts is not None and not 1 <= config.s3_max_parts <= 10_000:
        raise ConfigError(f"s3_max_parts must be 1 to 10000, the part numbers S3 accepts, got {config.s3_max_parts}")
    if config.s3_part_size > _S3_MAX_PART:
        raise ConfigError(f"s3_part_size must be at most 5GiB, the largest part S3 accepts, got {config.s3_part_size}")
    if config.store == "s3" and config.temp_max_size is not None and config.temp_max_size < 2 * config.s3_part_size:
        # The PATCH that cuts a part holds its own bytes and the part they join at once.
        raise ConfigError(
            f"temp_max_size ({config.temp_max_size}) must be at least twice s3_part_size ({config.s3_part_size})"
        )
    if config.download_stall_timeout <= 0:
        raise ConfigError(f"download_stall_timeout must be more than 0 seconds, got {config.download_stall_timeout}")
    unknown = [name for name in config.hooks_events if name not in EVENTS]
    if unknown:
        raise ConfigError(f"hooks_events: unknown {', '.join(unknown)}; expected some of {', '.join(EVENTS)}")
    if config.hooks_url is not None and not re.match(r"https?://[^/]+", config.hooks_url):
        # The value is not echoed: a webhook URL may carry credentials.
        raise ConfigError("hooks_url must be an http:// or https:// URL")
    if config.auth_secret is not None and len(config.auth_secret) < 16:
        raise ConfigError("auth_secret must be at least 16 characters (32 random ones are better)")
    problem = check_template(config.storage_key_template)
    if problem is not None:
        raise ConfigError(f"storage_key_template {config.storage_key_template!r}: {problem}")
    if config.s3_state_prefix is not None and config.s3_state_prefix.startswith("/"):
        raise ConfigError(f"s3_state_prefix must not start with '/', got {config.s3_state_prefix!r}")
    if not 1 <= config.s3_presign_expiry <= 7 * 86400:
        raise ConfigError(f"s3_presign_expiry must be 1 to 604800 seconds (7 days), got {config.s3_presign_expiry}")
    try:
        ObjectPolicy.from_config(config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
