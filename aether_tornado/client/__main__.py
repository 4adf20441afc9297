"""``python -m aether_tornado.client``: watch a group, or send one message of any kind.

    python -m aether_tornado.client ws://127.0.0.1:8888 --group g_demo --client c_ops
    python -m aether_tornado.client URL --group g_demo --client c_ops send group --msg "Hi"
    python -m aether_tornado.client URL --group g_demo --client c_ops send direct --to c_demo --msg "Psst"
    python -m aether_tornado.client URL --group g_demo --client c_ops send cmd --cmd RELOAD_UI

Watching prints one JSON line per frame (--format json) or a readable line (--format text),
until Ctrl-C or --seconds. Sending prints what comes back for --wait seconds; the exit status
is 1 if an ERROR came back, 2 if the server refused the connection.
"""

import argparse
import asyncio
import sys
from typing import Any

import orjson

from . import AetherClient, Refused

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aether_tornado.client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", help="the server, e.g. ws://127.0.0.1:8888")
    parser.add_argument("--group", required=True, help="group_id to connect to")
    parser.add_argument("--client", required=True, help="client_id to connect as")
    parser.add_argument("--token", help="a client token, for servers that require one")
    parser.add_argument("--format", choices=["json", "text"], default="json")
    parser.add_argument("--seconds", type=float, help="watch: stop after this long")
    commands = parser.add_subparsers(dest="command")
    send = commands.add_parser("send", help="send one message and print the replies")
    send.add_argument("kind", choices=KINDS)
    send.add_argument("--to", help="to_id, for direct (and a cmd sent to one client)")
    send.add_argument("--msg", help="the text")
    send.add_argument("--cmd", help="the command name, for cmd")
    send.add_argument("--target", choices=["group", "direct", "broadcast", "echo"], default="group", help="for cmd")
    send.add_argument("--payload", type=orjson.loads, help="a JSON object")
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
    async with AetherClient(args.url, args.group, args.client, token=args.token) as client:
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
        print(f"cannot connect: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
