"""Logging for the CLI: text or JSON lines on stderr, at the configured level."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

# Their DEBUG output includes signed request headers (Authorization, tokens).
_CHATTY_LIBRARIES = ("botocore", "aiobotocore", "s3transfer", "urllib3")
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def printable(text: str) -> str:
    """`text` with control and other non-printing characters escaped (\\r, \\x1b, \\u2028), so
    that a client-chosen string (a decoded URL path) cannot start a forged log line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exc when present)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class RedactSecrets(logging.Filter):
    """Masks credential values that might reach a message through an exception or URL."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 8]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self.secrets:
            redacted = redacted.replace(secret, "***")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Send every log record to stderr as text or JSON lines, replacing earlier handlers."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets([os.environ.get(name, "") for name in _SECRET_ENV]))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric)
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.INFO))
    # Python warnings would otherwise be raw stderr text between JSON lines.
    logging.captureWarnings(True)
