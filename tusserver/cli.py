"""The `tusserver` command: parse flags, load the config, run the server (or a subcommand)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web, web_response

from . import __version__
from .aiohttp_body import READ_BUFFER
from .app import SERVER_NAME, SHUTDOWN_KEY, add_ops_routes, create_app, server_headers
from .auth import make_token
from .config import Config
from .load import (
    CHOICES,
    CONFIG_ENV,
    ConfigError,
    FieldSpec,
    field_specs,
    load_config,
    parse_text,
    service_links,
)
from .logs import setup_logging
from .shutdown import Shutdown, drain_on_signals
from .sizes import format_size
from .stores.base import StoreStartError
from .workers import serve_workers

log = logging.getLogger("tusserver")


def build_parser() -> argparse.ArgumentParser:
    # Every flag is generated from a Config field, so adding a field adds its flag.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"TOML config file (or ${CONFIG_ENV}); see config.example.toml",
    )
    for spec in field_specs():
        _add_flag(common, spec)

    parser = argparse.ArgumentParser(
        prog="tusserver",
        usage="%(prog)s [options] [cleanup | s3-lifecycle | token | upload]",
        parents=[common],
        description="A tus 1.0.0 resumable-upload server. Settings: CLI flags > TUSSERVER_* environment "
        "> --config file > defaults.",
    )
    parser.add_argument("--version", action="version", version=f"tusserver {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{cleanup,s3-lifecycle,token,upload}")
    commands.add_parser(
        "cleanup",
        parents=[common],
        help="remove expired uploads once and exit (for cron)",
        description="Remove expired uploads once and exit.",
    )
    lifecycle = commands.add_parser(
        "s3-lifecycle",
        parents=[common],
        help="print an S3 lifecycle configuration (JSON) that removes storage debris",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print (JSON, on stdout) an S3 lifecycle configuration for the bucket, to apply with\n"
        "  aws s3api put-bucket-lifecycle-configuration --bucket B --lifecycle-configuration file://F\n"
        "(it replaces the bucket's lifecycle rules: merge them with any you have). Rules:\n"
        "- abort incomplete multipart uploads --abort-after-days after they start, in the whole bucket\n"
        "  (uploads may land under any key). An upload that takes longer than that from its first\n"
        "  part to its last byte loses its parts: choose more days than an upload may take.\n"
        "- with expire_finished (or --expire-state-days given): expire every object under the state\n"
        "  prefix (s3_state_prefix, else s3_prefix: .info, tail chunks, index entries, and today the\n"
        "  uploads' data too) --expire-state-days after it was last written. Without expire_finished\n"
        "  there is no such rule: finished uploads keep their .info there for ever.",
    )
    lifecycle.add_argument(
        "--abort-after-days",
        dest="lifecycle_abort_after_days",
        type=int,
        default=7,
        metavar="N",
        help="days after which S3 aborts an incomplete multipart upload (default 7)",
    )
    lifecycle.add_argument(
        "--expire-state-days",
        dest="lifecycle_expire_state_days",
        type=int,
        default=None,
        metavar="N",
        help="days after which S3 deletes an object under the state prefix; default: expire_after in whole "
        "days, rounded up, plus 1 (at least 1), since a state object untouched for longer belongs to an "
        "upload the server has expired. Giving it adds the rule even without expire_finished.",
    )
    token = commands.add_parser(
        "token",
        parents=[common],
        help="print a bearer token (a JWT signed with auth_secret)",
        description="Print a bearer token: a JWT signed with auth_secret (HS256); see README.md.",
    )
    token.add_argument("--ttl", dest="token_ttl", type=float, default=3600.0, help="seconds it is valid (3600)")
    token.add_argument("--subject", dest="token_subject", help="who it is for (the 'sub' claim)")
    token.add_argument(
        "--scope",
        dest="token_scope",
        action="append",
        metavar="SCOPE",
        help="upload, download or admin; repeat or space-separate for several (default: upload download)",
    )
    token.add_argument(
        "--upload",
        dest="token_upload",
        metavar="ID",
        help="valid for this one upload only (the 'upl' claim), e.g. a download link: --scope download",
    )
    # Listed for --help only: main() hands `upload ...` to the client before this parser runs.
    commands.add_parser(
        "upload",
        help="upload files to any tus server, resuming across runs (tusserver upload --help)",
        add_help=False,
    )
    return parser


def _add_flag(parser: argparse.ArgumentParser, spec: FieldSpec) -> None:
    where = f"default: {_shown_default(spec)}; env {spec.env}"
    if spec.kind is list:
        where = "comma-separated; " + where
    elif spec.size:
        where = "bytes or e.g. 5MiB, 1GiB; " + where
    # argparse formats help with %: a literal percent sign must be doubled.
    help_text = f"{spec.help} ({where})".replace("%", "%%")
    if spec.secret:
        help_text += " Prefer the environment: flags show in the process list."
    if spec.kind is bool:
        parser.add_argument(
            spec.flag, dest=spec.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
        )
        return
    choices = CHOICES.get(spec.name)
    parser.add_argument(
        spec.flag,
        dest=spec.name,
        metavar="{" + ",".join(choices) + "}" if choices else spec.name.upper(),
        choices=choices,
        type=_text_parser(spec),
        default=argparse.SUPPRESS,
        help=help_text,
    )


def _shown_default(spec: FieldSpec) -> str:
    default = spec.default
    if default is None:
        return "unset"
    if spec.kind is bool:
        return "true" if default else "false"
    if spec.kind is list:
        return repr(",".join(default))
    if spec.size:
        return format_size(default)
    return repr(default)


def _text_parser(spec: FieldSpec):
    def parse(text: str) -> Any:
        try:
            return parse_text(spec, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = spec.kind.__name__  # argparse names the type in some messages
    return parse


def build_app(config: Config, ops_sock: socket.socket | None = None) -> web.Application:
    """The tus app mounted at `config.base_path`, which also answers without its trailing slash;
    the ops endpoints beside it, or on their own listener when `ops_port` is set (on
    `ops_sock` when given: a worker's share of the master's)."""
    if config.ops_port is not None and config.ops_port > 65535:
        raise ConfigError(f"ops_port must be 0..65535, got {config.ops_port}")
    tus = create_app(config)
    ops_apart = config.ops_port is not None
    if config.base_path == "/":
        if not ops_apart:
            add_ops_routes(tus, tus)  # plain paths win over /{upload_id} in aiohttp's router
        else:
            tus.cleanup_ctx.append(_ops_listener(config, tus, ops_sock))
        return tus
    # "/files" must reach the collection too (POST /files like POST /files/). An empty
    # sub-app path becomes exactly the prefix once mounted.
    collection = next(r for r in tus.router.resources() if r.canonical == "/")
    for route in list(collection):
        tus.router.add_route(route.method, "", route.handler)
    root = web.Application()
    if not ops_apart:
        add_ops_routes(root, tus)
    else:
        root.cleanup_ctx.append(_ops_listener(config, tus, ops_sock))
    root.add_subapp(config.base_path, tus)
    root.on_response_prepare.append(server_headers)  # the root's own answers (404s) too
    root[SHUTDOWN_KEY] = tus[SHUTDOWN_KEY]
    return root


def _ops_listener(config: Config, tus: web.Application, sock: socket.socket | None = None):
    """A cleanup context that serves /metrics, /healthz and /readyz on ops_host:ops_port
    while the main app runs; they stay off the public listener."""

    async def listen(app: web.Application):
        ops = web.Application()
        add_ops_routes(ops, tus)
        ops.on_response_prepare.append(server_headers)
        runner = web.AppRunner(ops, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            if sock is not None:
                await web.SockSite(runner, sock).start()
            else:
                await web.TCPSite(runner, config.ops_host or config.host, config.ops_port).start()
            host, port = runner.addresses[0][:2]
            log.info("ops endpoints on http://%s:%d/ (/metrics, /healthz, /readyz)", _url_host(host), port)
            yield
        finally:
            await runner.cleanup()

    return listen


def serve(config: Config, sock: socket.socket | None = None, ops_sock: socket.socket | None = None) -> int:
    """Run the server until a signal stops it: `config.workers` processes (workers.py), or
    this one, on `sock` when given (a worker's)."""
    if config.workers > 1 and sock is None:
        return serve_workers(config, serve)
    try:
        app = build_app(config, ops_sock)
    except ValueError as exc:  # e.g. a cors_origins regex that does not compile
        log.error("invalid configuration: %s", exc)
        return 2
    shutdown = app[SHUTDOWN_KEY]
    assert isinstance(shutdown, Shutdown)

    async def on_signals(app: web.Application) -> None:
        drain_on_signals(shutdown, _exit)

    app.on_startup.append(on_signals)
    # Answers aiohttp gives before any app sees the request (a malformed request line: 400)
    # skip on_response_prepare; in our own process, its default Server value can change too.
    web_response.SERVER_SOFTWARE = SERVER_NAME
    url = f"http://{_url_host(config.host)}:{config.port}{config.base_path}"
    where = config.file_dir if config.store == "file" else f"s3://{config.s3_bucket}/{config.s3_prefix}"

    warning = exposure_warning(config)
    if warning:
        log.warning("%s", warning)

    def started(_message: str) -> None:
        log.info("tusserver %s listening on %s (store: %s %s)", __version__, url, config.store, where)

    where_to = {"sock": sock} if sock is not None else {"host": config.host, "port": config.port}
    web.run_app(
        app,
        **where_to,
        shutdown_timeout=config.shutdown_grace,
        access_log=None,  # the tus middleware logs one line per request on tusserver.access
        print=started,
        handle_signals=True,
        loop=new_event_loop(config.uvloop),
        read_bufsize=READ_BUFFER,  # what aiohttp buffers of a body before the handler runs
    )
    log.info("tusserver stopped")
    return 0


def _exit() -> None:
    # Raised in a loop callback, it ends run_app's loop, which then runs the app's cleanup.
    raise web.GracefulExit()


def new_event_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    """uvloop's loop when asked for and installed (the `speed` extra), else asyncio's."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def exposure_warning(config: Config) -> str | None:
    """The start-up warning for a server others can reach that lets anyone upload, or None."""
    if is_loopback(config.host) or config.auth_secret or (config.hooks_url and "pre-create" in config.hooks_events):
        return None
    return (
        f"SECURITY: no authentication, and {config.host or 'every address'} is reachable from other machines: "
        "anyone who can connect can upload files and download them. Set auth_secret (TUSSERVER_AUTH_SECRET) to require "
        "bearer tokens, or hooks_url with a pre-create hook that approves each upload, or listen on 127.0.0.1 "
        'behind an authenticating proxy (README: "Exposing tusserver on the internet").'
    )


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine. A name other than
    localhost counts as reachable: it may resolve to any interface."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # "" (every interface) or a host name


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def cleanup(config: Config) -> int:
    from .cleanup import run

    removed = run(config)
    log.info("cleanup removed %s expired uploads", removed)
    return 0


def print_token(config: Config, ttl: float, subject: str | None, scope: list[str] | None, upload: str | None) -> int:
    if not config.auth_secret:
        log.error("token: set auth_secret (TUSSERVER_AUTH_SECRET or the config file) first")
        return 2
    if not 0 < ttl <= config.auth_max_ttl:
        # The server would refuse it: an expiry further away than auth_max_ttl counts as absurd.
        log.error("token: --ttl must be more than 0 and at most auth_max_ttl (%g seconds)", config.auth_max_ttl)
        return 2
    try:
        token = make_token(
            config.auth_secret,
            ttl,
            subject=subject,
            scope=" ".join(scope) if scope else None,
            upload=upload,
            issuer=config.auth_issuer,
            audience=config.auth_audience,
        )
    except ValueError as exc:
        log.error("token: %s", exc)
        return 2
    print(token)
    return 0


def print_lifecycle(config: Config, abort_after_days: int, expire_state_days: int | None) -> int:
    from .s3_lifecycle import lifecycle_configuration

    try:
        rules = lifecycle_configuration(
            config, abort_after_days=abort_after_days, expire_state_days=expire_state_days
        )
    except ValueError as exc:
        log.error("s3-lifecycle: %s", exc)
        return 2
    print(json.dumps(rules, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["upload"]:  # the client has its own flags, none of the server's
        from .client.cli import main as upload

        return upload(argv[1:])
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    command = args.pop("command", None)
    token_args = {name[len("token_") :]: args.pop(name) for name in list(args) if name.startswith("token_")}
    lifecycle_args = {
        name[len("lifecycle_") :]: args.pop(name) for name in list(args) if name.startswith("lifecycle_")
    }
    config_file = args.pop("config", None)
    try:
        config = load_config(cli=args, env=os.environ, config_file=config_file)
    except ConfigError as exc:
        parser.error(str(exc))
    setup_logging(config.log_level, config.log_format)
    links = service_links(os.environ)
    if links:
        log.info(
            "ignoring %d Kubernetes service-link variables (%s); enableServiceLinks: false in the pod spec drops them",
            len(links),
            ", ".join(links),
        )
    try:
        if command == "cleanup":
            return cleanup(config)
        if command == "token":
            return print_token(config, **token_args)
        if command == "s3-lifecycle":
            return print_lifecycle(config, **lifecycle_args)
        return serve(config)
    except (OSError, StoreStartError) as exc:
        # Typically the port is taken, the data directory is not writable, or S3 refuses us.
        log.error("cannot start: %s", exc)
        return 1
