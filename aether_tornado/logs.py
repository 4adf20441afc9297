"""Logging set-up: readable lines by default, or one JSON object a line for log shippers."""

import logging
import re
import sys

import orjson

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is kept.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {key: value for key, value in record.__dict__.items() if key not in _STANDARD}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


# What a log line may never show: a token or an API key in a query, a bearer credential, a
# URL's password (the part between "user:" and "@"; a host's port is no secret).
_SECRETS = re.compile(r"(?i)(token=|(?<![a-z])key=|bearer\s+)[^&\s\"'@]+|(://[^:/@\s]*:)[^@\s/]+(?=@)")


class RedactSecrets(logging.Filter):
    """Masks secrets in every record, whichever library logged it (Tornado's request summaries too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _SECRETS.sub(lambda found: (found[1] or found[2]) + "***", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactSecrets())
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
