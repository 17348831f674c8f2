"""`tusserver upload FILE... --url URL`: resumable uploads from the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Callable, Sequence

from ..sizes import parse_size
from .http import HttpClient
from .progress import Progress, make_progress
from .resume import ResumeStore
from .tus import UploadError
from .uploader import CHECKSUM_ALGORITHMS, Options, Uploader

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
TOKEN_ENV = "TUSSERVER_TOKEN"


def _size(text: str) -> int:
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected at least one byte, got {text!r}")
    return size


def _positive(kind: type) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value <= 0 or (kind is int and value > 64):
            raise argparse.ArgumentTypeError(f"expected a positive number{' up to 64' if kind is int else ''}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _count(text: str) -> int:
    if not text.isdigit() or int(text) > 1000:
        raise argparse.ArgumentTypeError("expected a whole number from 0 to 1000")
    return int(text)


def _pair(separator: str, what: str):
    def parse(text: str) -> tuple[str, str]:
        name, found, value = text.partition(separator)
        if not found or not name.strip():
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return name.strip(), value.strip() if separator == ":" else value

    parse.__name__ = what
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tusserver upload",
        description="Upload files to any tus 1.0.0 server, resuming across runs: run the same command "
        "again after a crash, Ctrl-C or a lost network and it goes on from the server's offset.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="files to upload; - reads stdin (deferred length)")
    parser.add_argument("--url", required=True, help="the tus endpoint (collection URL), e.g. http://host:1080/files/")
    parser.add_argument("--metadata", action="append", default=[], type=_pair("=", "KEY=VALUE"), metavar="KEY=VALUE",
                        help="more Upload-Metadata (filename and filetype are set for you); repeatable")
    parser.add_argument("-H", "--header", action="append", default=[], type=_pair(":", "'Name: value'"),
                        metavar="'NAME: VALUE'", help="extra request header; repeatable")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                        help=f"bearer token (or ${TOKEN_ENV}; prefer the environment: flags show in the process list)")
    parser.add_argument("--chunk-size", type=_size, metavar="SIZE",
                        help="bytes per PATCH, e.g. 50MiB, for proxies that limit bodies (default: the whole file; "
                        "8MiB from stdin)")
    parser.add_argument("--parallel", type=_positive(int), default=1, metavar="N",
                        help="send N partial uploads at once and concatenate them (if the server offers it)")
    parser.add_argument("--checksum", choices=CHECKSUM_ALGORITHMS,
                        help="send Upload-Checksum with every PATCH (if the server offers the algorithm)")
    parser.add_argument("--retries", type=_count, default=10, metavar="N",
                        help="tries of a failing request before giving up (default 10; counted afresh after progress)")
    parser.add_argument("--timeout", type=_positive(float), default=30.0, metavar="SECONDS",
                        help="a request that moves no byte for this long is retried (default 30)")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="start new uploads instead of resuming remembered ones")
    parser.add_argument("--forget", action="store_true", help="forget the remembered uploads of FILE... and exit")
    parser.add_argument("--json", action="store_true", help='print one JSON object per file: {"file", "url", '
                        '"size", "seconds"}')
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress and no retry notices")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `tusserver upload` with `argv` (the arguments after `upload`); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not re.match(r"https?://[^/]", args.url):
        parser.error(f"--url must be an http:// or https:// URL, got {args.url!r}")
    if args.files.count("-") > 1:
        parser.error("stdin (-) can be given once")
    store = ResumeStore()
    if args.forget:
        return forget(args.files, args.url, store)
    headers = dict(args.header)
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    options = Options(
        chunk_size=args.chunk_size,
        parallel=args.parallel,
        checksum=args.checksum,
        retries=args.retries,
        timeout=args.timeout,
        resume=args.resume,
        metadata=dict(args.metadata),
    )
    try:
        return asyncio.run(_upload_all(args, headers, options, store))
    except KeyboardInterrupt:
        hint = "run the same command again to resume" if args.resume else "nothing is remembered (--no-resume)"
        print(f"\ntusserver upload: interrupted; {hint}", file=sys.stderr)
        return EXIT_INTERRUPTED


def forget(files: list[str], url: str, store: ResumeStore) -> int:
    status = 0
    for path in files:
        if path == "-":
            continue
        try:
            st = os.stat(path)
        except OSError as exc:
            _error(path, exc.strerror or str(exc))
            status = EXIT_FAILED
            continue
        from .resume import fingerprint

        forgotten = store.drop(fingerprint(path, st.st_size, st.st_mtime_ns, url))
        print(f"{path}: {'forgotten' if forgotten else 'nothing remembered'}", file=sys.stderr)
    return status


async def _upload_all(args: argparse.Namespace, headers: dict[str, str], options: Options, store: ResumeStore) -> int:
    sizes = {}
    for path in args.files:
        if path != "-":
            try:
                sizes[path] = os.stat(path).st_size
            except OSError:
                sizes[path] = 0
    total = None if "-" in args.files else sum(sizes.values())
    progress: Progress = make_progress(args.quiet, total)
    notice = (lambda message: None) if args.quiet else (lambda message: print(f"tusserver upload: {message}",
                                                                               file=sys.stderr))
    status = 0
    try:
        async with HttpClient(options.timeout) as http:
            uploader = Uploader(http, args.url, headers=headers, options=options, store=store, notice=notice)
            for path in args.files:
                watcher = progress.add_file(path if path != "-" else "stdin", sizes.get(path))
                try:
                    if path == "-":
                        result = await uploader.upload_stream(sys.stdin.buffer, "-", watcher)
                    else:
                        result = await uploader.upload_file(path, watcher)
                except UploadError as exc:
                    _error(path, str(exc))
                    status = EXIT_FAILED
                    continue
                except OSError as exc:  # the file itself: missing, unreadable
                    _error(path, exc.strerror or str(exc))
                    status = EXIT_FAILED
                    continue
                finally:
                    watcher.finish()
                if args.json:
                    print(json.dumps(result.to_json()), flush=True)
                else:
                    print(result.url, flush=True)
    finally:
        progress.close()
    return status


def _error(path: str, reason: str) -> None:
    print(f"tusserver upload: {path}: {reason}", file=sys.stderr)
