"""``python -m aether_tornado``: parse settings, set up logging, serve."""

import gc
import sys

import uvloop

from .app import serve
from .config import SettingsError, load_settings
from .logs import setup_logging
from .web.tornado_internals import check_tornado

# Allocations between collections of the youngest generation (CPython's default: 700).
GC_YOUNG_ALLOCATIONS = 7000


def main(argv: list[str] | None = None) -> int:
    try:
        check_tornado()
        settings = load_settings(argv)
    except (RuntimeError, SettingsError) as error:
        print(f"aether_tornado: error: {error}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    tune_gc()
    uvloop.run(serve(settings))  # libuv's loop and transports: see bench/RESULTS.md
    return 0


def tune_gc() -> None:
    """Collect cycles less often than CPython's default, and never look at the modules again.

    The collector must run (asyncio and Tornado make a reference cycle now and then), but at
    CPython's default pace a burst of connects grows the heap fast enough for a full
    collection every few hundred connects, each going over every live connection while they
    all wait (bench/RESULTS.md, "Garbage collection").
    """
    gc.freeze()  # what the imports made lives as long as the process
    gc.set_threshold(GC_YOUNG_ALLOCATIONS, *gc.get_threshold()[1:])


if __name__ == "__main__":
    sys.exit(main())
