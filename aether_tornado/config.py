"""Settings: one frozen object, read from flags, ``AETHER_*`` variables and a TOML file.

Precedence, lowest first: defaults, the ``--config`` file, the environment, the flags.
"""

import argparse
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from redis.asyncio.connection import parse_url


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the setting and its source."""


def _positive(instance: Any, attribute: "attrs.Attribute[Any]", value: float) -> None:
    if value <= 0:
        raise SettingsError(f"{attribute.name} must be greater than 0, got {value}")


def _not_negative(instance: Any, attribute: "attrs.Attribute[Any]", value: float) -> None:
    if value < 0:
        raise SettingsError(f"{attribute.name} must be 0 or more, got {value}")


def _port(instance: Any, attribute: "attrs.Attribute[Any]", value: int) -> None:
    if not 0 <= value <= 65535:
        raise SettingsError(f"{attribute.name} must be between 0 and 65535, got {value}")


def _origin(origin: str) -> str:
    """Origins are compared lower-case and without a trailing slash, however they were written."""
    return origin.strip().rstrip("/").lower()


def _host(host: str) -> str:
    """Host names are compared lower-case and without a trailing dot, however they were written."""
    return host.strip().rstrip(".").lower()


def _check_host(host: str) -> None:
    """A host name or address as a Host header names it, without a port, or * for any."""
    if host == "*" or (host_name(host) == host and re.fullmatch(r"[a-z0-9._-]+|\[[0-9a-f:.]+\]", host)):
        return
    raise SettingsError(
        f"allowed_hosts: {host!r} is not a host name; write it as a Host header names it, without a port, "
        "such as ws.example.com or [2001:db8::1] (* alone answers any)"
    )


def host_name(header: str) -> str:
    """The host a Host header names, lower-case, without its port: ``[::1]:8888`` is ``[::1]``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    name, colon, port = header.rpartition(":")
    return (name if colon and port.isdigit() else header).rstrip(".")


def _check_origin(origin: str) -> None:
    """An origin as browsers send it, scheme://host[:port], or * for any; nothing that never matches."""
    if origin == "*":
        return
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or "*" in origin
        or (parts.path or parts.query or parts.fragment or parts.username)
    ):
        raise SettingsError(
            f"allowed_origins: {origin!r} is not an origin; write scheme://host[:port], "
            "such as https://app.example.com (no path, no wildcard; * alone allows any)"
        )


def _secret(instance: Any, attribute: "attrs.Attribute[Any]", value: str | None) -> None:
    if value is not None and len(value.encode()) < 32:
        raise SettingsError(f"{attribute.name} must be at least 32 bytes (RFC 7518 section 3.2)")


def _api_key(instance: Any, attribute: "attrs.Attribute[Any]", value: str | None) -> None:
    if value is not None and len(value.strip()) < 16:
        raise SettingsError(f"{attribute.name} must be at least 16 characters (an empty one is not 'no key')")


def _redis_url(instance: Any, attribute: "attrs.Attribute[Any]", value: str | None) -> None:
    if value is None:
        return
    try:
        parse_url(value)
    except ValueError as error:
        raise SettingsError(f"{attribute.name} is not a Redis URL: {error}") from None


def _one_of(*choices: str) -> Any:
    def check(instance: Any, attribute: "attrs.Attribute[Any]", value: str) -> None:
        if value not in choices:
            raise SettingsError(f"{attribute.name} must be one of {', '.join(choices)}, got {value!r}")

    return check


def _hosts(hosts: Iterable[str]) -> tuple[str, ...]:
    return tuple(_host(host) for host in hosts if host.strip())


def _check_hosts(instance: Any, attribute: "attrs.Attribute[Any]", hosts: tuple[str, ...]) -> None:
    for host in hosts:
        _check_host(host)


def _origins(origins: Iterable[str]) -> tuple[str, ...]:
    return tuple(_origin(origin) for origin in origins if origin.strip())


def _check_origins(instance: Any, attribute: "attrs.Attribute[Any]", origins: tuple[str, ...]) -> None:
    for origin in origins:
        _check_origin(origin)


def _setting(default: Any, help: str, validator: Any = None) -> Any:
    return attrs.field(default=default, validator=validator, metadata={"help": help})


@attrs.frozen
class Settings:
    """Every knob of the server, each with a production default."""

    host: str = _setting("127.0.0.1", "address to listen on")
    port: int = _setting(8888, "port to listen on (0 picks a free one)", _port)
    redis_url: str | None = _setting(
        None,
        "Redis URL (redis://, rediss:// or unix://) shared by processes that act as one; omit to serve alone",
        _redis_url,
    )
    redis_cluster: bool = _setting(
        False, "redis_url names a node of a Redis Cluster (7.0 or newer): shard channels and keys over its masters"
    )
    redis_prefix: str = _setting("aether", "prefix of every Redis key and channel, so deployments can share one Redis")
    api_key: str | None = _setting(
        None, "key (16 characters or more) backends send as 'Authorization: Bearer KEY' on /v3/ HTTP routes", _api_key
    )
    api_read_key: str | None = _setting(
        None,
        "key (16 characters or more) for the /v3/ routes that only read (the operator's page, groups, "
        "processes, presence, history, watching a group); publishing, disconnecting and removing history "
        "need api_key",
        _api_key,
    )
    api_open: bool = _setting(
        False, "serve the /v3/ HTTP API without a key on a non-loopback address (without it, that refuses to start)"
    )
    jwt_secret: str | None = _setting(
        None, "HS256 secret of client tokens (?token=), 32 bytes or more; set, every WebSocket needs a token", _secret
    )
    recovery_secret: str | None = _setting(
        None,
        "secret (32 bytes or more) that signs the recovery proofs clients present; unset, the processes share "
        "one they keep in Redis (or, alone, one of their own)",
        _secret,
    )
    max_message_bytes: int = _setting(
        65536, "largest message a client may send, all its fragments together; a larger one closes with 1009", _positive
    )
    max_fragments: int = _setting(64, "frames one message may be split into; more close with 1008", _positive)
    frame_rate: float = _setting(
        500.0, "frames of any kind (data, ping, pong, continuation) a client may send a second", _positive
    )
    frame_burst: int = _setting(
        2000, "frames a client may send in one burst; past the budget it is closed with 1008", _positive
    )
    byte_rate: float = _setting(
        262144.0, "bytes a second a client's socket is read at, sustained (past the burst, reading waits)", _positive
    )
    byte_burst: int = _setting(262144, "bytes a client may send at once before reading waits for byte_rate", _positive)
    control_rate: float = _setting(10.0, "pings and pongs a client may send a second", _positive)
    control_burst: int = _setting(50, "pings and pongs a client may send in one burst; past it, 1008", _positive)
    rate_limit: float = _setting(100.0, "messages per second a connection may send, sustained", _positive)
    rate_burst: int = _setting(1000, "messages a connection may send in one burst", _positive)
    rate_strikes: int = _setting(
        100, "rate_limited replies in a row after which a client still sending is closed with 1008", _positive
    )
    idle_timeout: float = _setting(
        180.0, "seconds without a message from a client before it is closed with 1001", _positive
    )
    lease_seconds: float = _setting(
        90.0, "presence lease; a client of a process that died leaves after this long", _positive
    )
    max_connections: int = _setting(20000, "open WebSockets per process; more are refused with 503", _positive)
    max_http_connections: int = _setting(
        1000, "HTTP connections open at once (handshakes under way, API calls, silent ones); more are closed", _positive
    )
    allow_client_broadcast: bool = _setting(True, "whether clients may send target 'broadcast'")
    record_byte_rate: float = _setting(
        32768.0,
        "bytes a second of messages a connection may have recorded for recovery, each costing its size and 64, "
        "sustained (past it: rate_limited)",
        _positive,
    )
    record_byte_burst: int = _setting(
        1048576, "bytes of messages a connection may have recorded in one burst (at least max_message_bytes)", _positive
    )
    broadcast_rate: float = _setting(1.0, "broadcasts a second a client may send, sustained", _positive)
    broadcast_burst: int = _setting(10, "broadcasts a client may send in one burst; more get rate_limited", _positive)
    broadcast_requires_grant: bool = _setting(
        False, "clients may broadcast only with a token that grants it (needs jwt_secret)"
    )
    outbound_buffer_bytes: int = _setting(
        1048576, "unsent bytes held for one connection before it is closed with 1013", _positive
    )
    history_size: int = _setting(
        1000,
        "recent messages kept per group, per client and for broadcast, for clients that recover (0: none)",
        _not_negative,
    )
    history_seconds: float = _setting(
        300.0, "how long a message stays recoverable; a client away longer is told it did not recover", _positive
    )
    allowed_hosts: tuple[str, ...] = attrs.field(
        default=(),
        converter=_hosts,
        validator=_check_hosts,
        metadata={
            "help": "host names the server answers for (the Host header, any port), comma-separated; on a loopback "
            "address localhost, 127.0.0.1 and [::1] unless set, elsewhere required (* answers any)"
        },
    )
    allowed_origins: tuple[str, ...] = attrs.field(
        default=(),
        converter=_origins,
        validator=_check_origins,
        metadata={
            "help": "extra browser origins allowed to connect, comma-separated (the server's own host always is)"
        },
    )
    console: bool = _setting(True, "serve the console page at /v3/console (the client module is always served)")
    ping_interval: float = _setting(
        25.0, "seconds between WebSocket pings that find dead peers (0 turns them off)", _not_negative
    )
    close_timeout: float = _setting(
        5.0, "seconds to wait for the client's close frame (or its end) after ours before dropping it", _positive
    )
    shutdown_timeout: float = _setting(
        10.0, "seconds to wait for sockets to close on SIGTERM before exiting", _positive
    )
    log_format: str = _setting("text", "text, or json for one JSON object a line", _one_of("text", "json"))
    log_level: str = _setting(
        "info",
        "debug, info, warning or error",
        _one_of("debug", "info", "warning", "error"),
    )


# Secrets may also come from a file (--api-key-file) or a systemd credential of the same name
# (LoadCredential=api_key:/etc/...), so that they never stand in a command line or environment.
SECRETS = ("api_key", "api_read_key", "jwt_secret", "recovery_secret")


def _check_together(settings: "Settings") -> None:
    if settings.broadcast_requires_grant and settings.jwt_secret is None:
        raise SettingsError("broadcast_requires_grant needs jwt_secret: only a token can grant broadcast")
    if settings.api_key is None and not settings.api_open and not is_loopback(settings.host):
        raise SettingsError(
            f"listening on {settings.host!r} without an API key would open the backend API (POST /v3/publish) "
            "to everyone: set --api-key or --api-key-file, or --api-open true if that is meant"
        )
    if settings.api_read_key is not None and settings.api_key is None:
        raise SettingsError("api_read_key needs api_key: without api_key every /v3/ route is open, writing included")
    if settings.api_read_key is not None and settings.api_read_key == settings.api_key:
        raise SettingsError("api_read_key must differ from api_key, or reading would allow writing")
    if settings.record_byte_burst < settings.max_message_bytes:
        raise SettingsError("record_byte_burst must be at least max_message_bytes, or the largest messages never pass")
    if not settings.allowed_hosts and not is_loopback(settings.host):
        raise SettingsError(
            f"listening on {settings.host!r}, the server must know its own host names, so that a page on another "
            "site cannot reach it through a name of its own (DNS rebinding): set --allowed-hosts, "
            "such as ws.example.com (or * if a proxy in front checks them)"
        )


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def answered_hosts(settings: Settings) -> frozenset[str]:
    """The host names whose requests the server answers; ``*`` among them answers any."""
    return frozenset(settings.allowed_hosts or LOOPBACK_HOSTS)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host``; a name other than localhost may resolve to anything."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_secret(path: str, source: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as error:
        raise SettingsError(f"{source}: cannot read {path}: {error.strerror}") from None


def _secrets_from_files(values: dict[str, Any], args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Fill the secrets from --NAME-file, AETHER_NAME_FILE or a systemd credential NAME."""
    for name in SECRETS:
        flagged, file_env = getattr(args, name + "_file"), _env_name(name) + "_FILE"
        path, source = (flagged, _flag(name) + "-file") if flagged else (environ.get(file_env), file_env)
        if path is None and name not in values and environ.get("CREDENTIALS_DIRECTORY"):
            credential = Path(environ["CREDENTIALS_DIRECTORY"]) / name
            if credential.is_file():
                path, source = str(credential), f"systemd credential {name}"
        if path is None:
            continue
        if name in values:
            raise SettingsError(f"{source}: {name} is given twice, as a value and as a file; give one")
        values[name] = _read_secret(path, source)


def _env_name(name: str) -> str:
    return "AETHER_" + name.upper()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse(field: "attrs.Attribute[Any]", raw: Any, source: str) -> Any:
    """Convert a raw value from a file, the environment or a flag to the field's type."""
    kind = field.type
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind is int:
            if isinstance(raw, (bool, float)):
                raise ValueError("expected a whole number")
            return int(raw)
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError("expected a number")
            return float(raw)
        if kind == tuple[str, ...]:
            items = raw if isinstance(raw, list) else str(raw).split(",")
            return tuple(str(item) for item in items)
        if raw == "" and kind == str | None and field.name not in SECRETS:  # an empty variable unsets it
            return None
        return str(raw)
    except ValueError as error:
        raise SettingsError(f"{source}: cannot use {raw!r}: {error}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aether-tornado",
        description="Serve the Aether V3 WebSocket protocol. Every setting may also come "
        "from an AETHER_<NAME> environment variable or a TOML --config file.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file of settings (keys as below, with _)")
    for field in attrs.fields(Settings):
        default = field.default if field.default != () else ""
        parser.add_argument(
            _flag(field.name),
            dest=field.name,
            metavar=field.name.upper(),
            help=f"{field.metadata['help']} [env {_env_name(field.name)}, default {default}]",
        )
    for name in SECRETS:
        parser.add_argument(
            _flag(name) + "-file",
            dest=name + "_file",
            metavar="FILE",
            help=f"read {name} from FILE (or a systemd credential named {name}) [env {_env_name(name)}_FILE]",
        )
    return parser


def load_settings(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from flags, environment and file; raise SettingsError on any bad value."""
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    known = {field.name: field for field in attrs.fields(Settings)}
    values: dict[str, Any] = {}
    if args.config:
        try:
            table = tomllib.loads(Path(args.config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise SettingsError(f"--config {args.config}: {error}") from None
        for name, raw in table.items():
            if name not in known:
                raise SettingsError(f"--config {args.config}: unknown setting {name!r}")
            values[name] = _parse(known[name], raw, f"{args.config}: {name}")
    for name, field in known.items():
        if _env_name(name) in environ:
            values[name] = _parse(field, environ[_env_name(name)], _env_name(name))
        flag_value = getattr(args, name)
        if flag_value is not None:
            values[name] = _parse(field, flag_value, _flag(name))
    _secrets_from_files(values, args, environ)
    try:
        settings = Settings(**values)
    except SettingsError:
        raise
    except ValueError as error:
        raise SettingsError(str(error)) from None
    _check_together(settings)
    return settings
