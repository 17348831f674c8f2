"""Byte counts as people write them ("5MiB", "1.5GiB", "10MB"), parsed exactly.

Shared by the server's configuration and the uploader, so it imports nothing heavy."""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
# The largest integer setting, as in TOML (64-bit): beyond it a value is a typo, and it
# would not fit an Upload-Length header or an S3 call anyway.
MAX_INT = (1 << 63) - 1


def parse_size(text: str) -> int:
    """Bytes from "1048576", "5MiB", "1.5GiB", "10MB" (decimal) and the like, exactly."""
    match = _SIZE.fullmatch(text)
    unit = match and _SIZE_UNITS.get(match.group(2).lower())
    if not match or unit is None:
        raise ValueError(f"expected a size like 1048576, 5MiB or 1GiB, got {shown(text)}")
    whole, _, fraction = match.group(1).partition(".")
    whole, fraction = whole.lstrip("0") or "0", fraction.rstrip("0")
    # Checked before any arithmetic: a 5,000-digit number would otherwise hit Python's
    # int-from-text limit with a message about sys.set_int_max_str_digits.
    if len(whole) > len(str(MAX_INT)):
        raise ValueError(f"{shown(text)} is too large (at most {MAX_INT} bytes)")
    if len(fraction) > 40:  # 1/2**40 (of a TiB) has 40 decimals; more never make whole bytes
        raise ValueError(f"{shown(text)} is not a whole number of bytes")
    value = Fraction(f"{whole}.{fraction or 0}") * unit  # exact: a float rounds 9007199254740993, overflows on 1e400
    if value.denominator != 1:
        raise ValueError(f"{shown(text)} is not a whole number of bytes")
    if value > MAX_INT:
        raise ValueError(f"{shown(text)} is too large (at most {MAX_INT} bytes)")
    return int(value)


def format_size(size: int) -> str:
    """The shortest exact binary-unit spelling of `size`: 10GiB, 4KiB, 1000 (parse_size reads it back)."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def shown(value: Any) -> str:
    """`value` for a message (quoted if text), cut short when an operator pasted something huge."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= 40:
        return repr(value)
    return (repr(text[:40]) if isinstance(value, str) else text[:40]) + f"... ({len(text)} characters)"
