"""The physical references of the benchmarks, each run as its own process.

python bench/ceilings.py disk PORT DIR
    ceiling-disk: a minimal aiohttp server that writes each request body to a file
    (POST creates, PATCH writes at Upload-Offset, HEAD tells the size), so the bench
    client drives it exactly like a tus server, minus every tus check.
python bench/ceilings.py s3 ENDPOINT BUCKET KEY FILE SIZE PART_SIZE IN_FLIGHT
    ceiling-s3: aiobotocore uploads the first SIZE bytes of FILE straight to S3 as one
    multipart upload, IN_FLIGHT parts at a time; prints the seconds it took as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time

from aiohttp import web


def disk_app(directory: str) -> web.Application:
    async def create(request: web.Request) -> web.Response:
        upload_id = secrets.token_hex(16)
        open(os.path.join(directory, upload_id), "xb").close()
        return web.Response(status=201, headers={"Location": f"/files/{upload_id}", "Tus-Resumable": "1.0.0"})

    async def write(request: web.Request) -> web.Response:
        offset = int(request.headers["Upload-Offset"])
        with open(os.path.join(directory, request.match_info["id"]), "r+b") as f:
            f.seek(offset)
            async for chunk in request.content.iter_any():
                f.write(chunk)
            end = f.tell()
        return web.Response(status=204, headers={"Upload-Offset": str(end), "Tus-Resumable": "1.0.0"})

    async def size(request: web.Request) -> web.Response:
        path = os.path.join(directory, request.match_info["id"])
        return web.Response(headers={"Upload-Offset": str(os.stat(path).st_size), "Tus-Resumable": "1.0.0"})

    app = web.Application()
    app.router.add_post("/files/", create)
    app.router.add_patch("/files/{id}", write)
    app.router.add_head("/files/{id}", size)
    return app


async def s3_upload(
    endpoint: str, bucket: str, key: str, path: str, size: int, part_size: int, in_flight: int
) -> float:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",  # plain bodies, as our store sends them
        response_checksum_validation="when_required",
        max_pool_connections=in_flight + 2,
    )
    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config) as s3:
        started = time.perf_counter()
        upload = (await s3.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
        slots = asyncio.Semaphore(in_flight)

        async def send(number: int, start: int) -> dict:
            async with slots:
                data = await asyncio.to_thread(_read, path, start, min(part_size, size - start))
                response = await s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data)
                return {"PartNumber": number, "ETag": response["ETag"]}

        parts = await asyncio.gather(
            *(send(number, start) for number, start in enumerate(range(0, size, part_size), 1))
        )
        await s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": list(parts)}
        )
        return time.perf_counter() - started


def _read(path: str, start: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(size)


def main(argv: list[str]) -> None:
    if argv[:1] == ["disk"]:
        port, directory = int(argv[1]), argv[2]
        web.run_app(disk_app(directory), host="127.0.0.1", port=port, access_log=None, print=None)
    elif argv[:1] == ["s3"]:
        endpoint, bucket, key, path = argv[1:5]
        size, part_size, in_flight = (int(x) for x in argv[5:8])
        seconds = asyncio.run(s3_upload(endpoint, bucket, key, path, size, part_size, in_flight))
        print(json.dumps({"seconds": seconds}))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
