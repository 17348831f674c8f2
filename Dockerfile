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
# Arguments after the image name in `docker run` are appended; for a repeated flag the last one
# wins, so `docker run tusserver --file-dir /elsewhere` overrides the default below.
ENTRYPOINT ["tusserver", "--host", "0.0.0.0", "--file-dir", "/data"]
