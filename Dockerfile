# tusserver on the file store: docker build -t tusserver . && docker run -p 1080:1080 -v tus-data:/data tusserver
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY tusserver ./tusserver
# uvloop (speed) for throughput, redis-py for several instances sharing locks.
RUN pip install ".[speed,redis]" && rm -rf /app

RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin tusserver \
    && mkdir /data && chown tusserver:tusserver /data
VOLUME /data
USER tusserver
WORKDIR /data

EXPOSE 1080
# The image runs with tusserver's built-in limits (config.py), which are on by default:
#   max_size               10GiB   largest upload (413 beyond)
#   expire_after           86400   unfinished uploads are removed a day after their last PATCH
#   max_concurrent_uploads 200     uploads receiving bytes at once (503 + Retry-After beyond)
#   max_metadata_size      4KiB    Upload-Metadata header (413 beyond)
#   max_metadata_count     32      Upload-Metadata keys (400 beyond)
# They are deliberately not repeated here as ENV or flags: those would outrank a --config file.
# Change one with a flag or a TUSSERVER_* variable (`none` lifts it). Listening on 0.0.0.0
# without auth_secret or a pre-create webhook logs a SECURITY warning at start-up; see the
# README's "Exposing tusserver on the internet".
# Arguments after the image name in `docker run` are appended; for a repeated flag the last one
# wins, so `docker run tusserver --file-dir /elsewhere` overrides the default below.
ENTRYPOINT ["tusserver", "--host", "0.0.0.0", "--file-dir", "/data"]
