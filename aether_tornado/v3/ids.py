"""The Vision ID rule: the one definition of a valid client, group or recipient ID."""

import re

MAX_ID_LENGTH = 64
_ID_CHARS = re.compile(r"[A-Za-z0-9_-]+")


def id_problem(value: str) -> str | None:
    """Say why ``value`` is not a Vision ID, or return None when it is one.

    All-digit IDs are refused: they are database integers, which the guide forbids
    on the wire.
    """
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"must be at most {MAX_ID_LENGTH} characters, got {len(value)}"
    if not _ID_CHARS.fullmatch(value):
        return "may contain only A-Z a-z 0-9 _ -"
    if value.isdigit():
        return "must not be all digits (a database integer is not a Vision ID)"
    return None


def is_id_prefix(value: str) -> bool:
    """Whether ``value`` could start a Vision ID (all digits too: more may follow)."""
    return len(value) <= MAX_ID_LENGTH and (not value or _ID_CHARS.fullmatch(value) is not None)
