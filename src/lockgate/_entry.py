"""The ``lockgate`` command's first moments, before the CLI's imports.

``lockgate serve`` is a daemon that ``systemctl reload`` signals with SIGHUP, whose default
action ends the process. Importing the CLI takes a while on a loaded host, so a reload sent
right after a start could kill the gateway before ``cmd_serve`` takes the signal over. This
module ignores SIGHUP first thing when the command serves, then hands over to the CLI.
"""

from __future__ import annotations

import signal
import sys


def main() -> int:
    if "serve" in sys.argv[1:]:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from lockgate.cli import main as cli_main

    return cli_main()
