"""``python -m aether_tornado.client``: the Python client on the command line (``--help`` says how)."""

import argparse
import asyncio
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from ..v3.ids import MAX_ID_LENGTH
from . import AetherClient, Refused

DESCRIPTION = """\
Watch a group, or send one message of any kind, as one client of an Aether V3 server.

  watch:  python -m aether_tornado.client ws://127.0.0.1:8888 --group g_demo --client c_ops
  send:   python -m aether_tornado.client ws://127.0.0.1:8888 --group g_demo --client c_ops \\
              send group --msg "Hi"
          ... send direct --to c_demo --msg "Psst"
          ... send cmd --cmd RELOAD_UI --payload '{"page": "home"}'

Watching prints one JSON line per frame (--format json) or a readable line (--format text)
until Ctrl-C or --seconds. Sending prints what comes back for --wait seconds.
"""
EPILOG = f"""\
IDs (group, client, --to) are Vision IDs: 1 to {MAX_ID_LENGTH} characters of A-Z a-z 0-9 _ -,
not all digits (a database integer is not a Vision ID).

Exit status: 0 done; 1 the server answered with an ERROR; 2 the arguments were wrong, the
server could not be reached, or it refused the connection.
"""
# What a user may paste as the server's address, and what it means.
SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}

KINDS = {
    "group": {"msg_type": "msg", "target": "group"},
    "direct": {"msg_type": "msg", "target": "direct"},
    "broadcast": {"msg_type": "msg", "target": "broadcast"},
    "echo": {"msg_type": "msg", "target": "echo"},
    "cmd": {"msg_type": "cmd"},
    "heartbeat": {"msg_type": "heartbeat", "target": "echo"},
    "presence": {"msg_type": "presence", "target": "echo"},
}


def _is_error(message: dict[str, Any]) -> bool:
    """An error from the server itself; a peer may send a command named ERROR too."""
    return message.get("cmd") == "ERROR" and message.get("from_id") is None


def readable(message: dict[str, Any]) -> str:
    time = (message.get("sent_at") or "")[11:23]
    payload = message.get("payload") or {}
    if _is_error(message):
        return f"{time} ERROR {payload.get('code')}: {message.get('msg')}"
    if message.get("msg_type") == "presence":
        if payload.get("event") == "snapshot":
            return f"{time} present in {message.get('group_id')}: {', '.join(payload.get('clients', []))}"
        reason = f" ({payload['reason']})" if "reason" in payload else ""
        return f"{time} {payload.get('client_id')} {payload.get('event')}s {message.get('group_id')}{reason}"
    sender = message.get("from_id") or "server"
    to = message.get("to_id") or message.get("group_id") or "everybody"
    what = " ".join(part for part in (message.get("cmd"), message.get("msg")) if part)
    extra = f" {orjson.dumps(payload).decode()}" if payload else ""
    return f"{time} [{message.get('target')}] {sender} -> {to}: {what}{extra}"


def server_url(text: str) -> str:
    """The server's address as a WebSocket base URL: ws:// or wss://, or http(s):// meaning the same."""
    parts = urlsplit(text)
    if parts.scheme not in SCHEMES or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a server address: give ws://HOST:PORT or wss://HOST")
    if parts.path.strip("/") or parts.query:
        raise argparse.ArgumentTypeError(
            f"{text!r} has a path: give the server's address only; --group and --client make the rest"
        )
    return urlunsplit((SCHEMES[parts.scheme], parts.netloc, "", "", ""))


def json_object(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"k\": 1}}', not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aether_tornado.client",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", type=server_url, help="the server, e.g. ws://127.0.0.1:8888")
    parser.add_argument("--group", required=True, help="group_id to connect to (a Vision ID)")
    parser.add_argument("--client", required=True, help="client_id to connect as (a Vision ID)")
    parser.add_argument("--token", help="a client token, for servers that require one")
    parser.add_argument("--format", choices=["json", "text"], default="json", help="JSON lines, or readable text")
    parser.add_argument("--seconds", type=float, help="watch: stop after this long")
    commands = parser.add_subparsers(dest="command", metavar="send KIND", help="send one message instead of watching")
    send = commands.add_parser("send", help="send one message and print the replies")
    send.add_argument("kind", choices=KINDS)
    send.add_argument("--to", help="to_id, for direct (and a cmd sent to one client)")
    send.add_argument("--msg", help="the text")
    send.add_argument("--cmd", help="the command name, for cmd")
    send.add_argument("--target", choices=["group", "direct", "broadcast", "echo"], default="group", help="for cmd")
    send.add_argument("--payload", type=json_object, help="a JSON object")
    send.add_argument("--wait", type=float, default=1.0, help="seconds to print replies for")
    return parser


def message_of(args: argparse.Namespace) -> dict[str, Any]:
    message = dict(KINDS[args.kind])
    if args.kind == "cmd":
        message["target"] = args.target
    fields = {"to_id": args.to, "msg": args.msg, "cmd": args.cmd, "payload": args.payload}
    return message | {key: value for key, value in fields.items() if value is not None}


async def run(args: argparse.Namespace) -> int:
    show = (lambda message: orjson.dumps(message).decode()) if args.format == "json" else readable
    async with AetherClient(args.url, args.group, args.client, token=args.token, fail_fast=True) as client:
        if args.command == "send":
            client.send(message_of(args))
            seconds, status = args.wait, 0
        else:
            seconds, status = args.seconds, 0
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        while deadline is None or loop.time() < deadline:
            try:
                message = await client.recv(None if deadline is None else deadline - loop.time())
            except TimeoutError:
                break
            print(show(message), flush=True)
            if args.command == "send" and _is_error(message):
                status = 1
        return status


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except Refused as refusal:
        print(f"refused: {refusal}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except (OSError, TimeoutError) as error:
        print(f"cannot connect to {args.url}: {error.strerror or error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
