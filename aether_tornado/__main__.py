"""``python -m aether_tornado``: parse settings, set up logging, serve."""

import sys

import uvloop

from .app import serve
from .config import SettingsError, load_settings
from .logs import setup_logging
from .tornado_internals import check_tornado


def main(argv: list[str] | None = None) -> int:
    try:
        check_tornado()
        settings = load_settings(argv)
    except (RuntimeError, SettingsError) as error:
        print(f"aether_tornado: error: {error}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    uvloop.run(serve(settings))  # libuv's loop and transports: see bench/RESULTS.md
    return 0


if __name__ == "__main__":
    sys.exit(main())
