"""The core does not depend on aiohttp's server side: only the aiohttp front door imports
aiohttp.web, its HTTP parser and its request streams. aiohttp's client side (ClientSession,
ClientError, ClientTimeout: webhooks, JWKS, the uploader) is allowed everywhere."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tusserver"

# The aiohttp front door: the modules that may import aiohttp's server side. `keys` holds
# the request-storage keys it leaves for parent apps' middlewares; `cli` runs it.
ADAPTERS = {
    "tusserver.app",
    "tusserver.aiohttp_body",
    "tusserver.keys",
    "tusserver.cli",
}

# aiohttp modules that belong to its server side (by their first dotted part after "aiohttp.").
SERVER_SIDE = ("web", "http", "streams", "base_protocol", "test_utils", "worker", "pytest_plugin")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_server_module(name: str) -> bool:
    """`name` is an aiohttp module path like "aiohttp.web_request"."""
    first = name.split(".")[1] if name.startswith("aiohttp.") else ""
    return first.startswith(SERVER_SIDE)


def is_server_name(attribute: str) -> bool:
    """`aiohttp.<attribute>` is (or comes from) a server-side module."""
    if is_server_module(f"aiohttp.{attribute}"):
        return True
    value = getattr(aiohttp, attribute, None)
    origin = getattr(value, "__module__", None) or ""
    return is_server_module(origin)


def server_side_uses(path: Path) -> list[str]:
    """Each import (or `aiohttp.x` attribute) in `path` that reaches aiohttp's server side."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "aiohttp":
                    aliases.add(alias.asname or "aiohttp")
                elif is_server_module(alias.name):
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "aiohttp":
                found += [f"{node.lineno}: from aiohttp import {a.name}" for a in node.names if is_server_name(a.name)]
            elif is_server_module(node.module):
                found.append(f"{node.lineno}: from {node.module} import ...")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if is_server_name(node.attr):
                found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_the_checker_sees_every_way_to_reach_the_server_side(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import aiohttp\n"
        "import aiohttp.web_request\n"
        "from aiohttp import web, StreamReader, ClientSession, ClientError, ClientTimeout, hdrs\n"
        "from aiohttp.http import HttpVersion11\n"
        "from aiohttp.client import ClientResponse\n"
        "x = aiohttp.web.Response\n"
        "y = aiohttp.ClientSession\n"
    )
    assert server_side_uses(sample) == [
        "2: import aiohttp.web_request",
        "3: from aiohttp import web",
        "3: from aiohttp import StreamReader",
        "4: from aiohttp.http import ...",
        "6: aiohttp.web",
    ]


def test_only_the_aiohttp_adapter_imports_aiohttp_server_side():
    modules = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    assert ADAPTERS <= set(modules), ADAPTERS - set(modules)
    offenders = {
        name: uses for name, path in modules.items() if name not in ADAPTERS and (uses := server_side_uses(path))
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "modules", ["tusserver.service, tusserver.asgi", "tusserver.asgi, tusserver.stores.file, tusserver.stores.s3"]
)
def test_the_asgi_door_loads_no_aiohttp_web(modules):
    code = f"import sys, {modules}; print(sorted(m for m in sys.modules if m.startswith('aiohttp.web')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
