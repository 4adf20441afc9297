"""``python -m aether_tornado``: parse settings, set up logging, serve."""

import asyncio
import sys

from .app import serve
from .config import SettingsError, load_settings
from .logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as error:
        print(f"aether_tornado: error: {error}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
