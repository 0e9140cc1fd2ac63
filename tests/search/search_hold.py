"""Run ``diffusion-accel search`` and stop it at a known point: a test-side launcher for the kill/resume test.

``python search_hold.py <hold-file> <generation> <search args...>`` runs the search command as the CLI does,
with a ``callback`` (the public hook of ``search_schedule``) that, once the checkpoint of ``<generation>`` is
written, writes ``<hold-file>`` (the process id) and waits (up to 10 min) instead of going on. The test kills
the process there: always after that checkpoint and before the next round, however fast the machine (polling
for the checkpoint and then killing raced the search's end). The product's code is not changed; the command
line has no such option.
"""

from __future__ import annotations

import os
import sys
import time


def _holding_search(search_schedule, hold_file: str, generation: int):
    def search(*args, callback=None, **kwargs):
        def hold_after(event):
            if callback is not None:
                callback(event)
            if event["event"] == "generation" and event["generation"] == generation:
                with open(hold_file + ".tmp", "w", encoding="utf-8") as fh:
                    fh.write(str(os.getpid()))
                os.replace(hold_file + ".tmp", hold_file)  # appears whole
                time.sleep(600)
                raise SystemExit("search_hold: not killed within 10 min")

        return search_schedule(*args, callback=hold_after, **kwargs)

    return search


def main(argv: list[str]) -> int:
    hold_file, generation, *args = argv
    from diffusion_accel.search import runner

    runner.search_schedule = _holding_search(runner.search_schedule, hold_file, int(generation))
    from diffusion_accel.cli import main as cli_main

    return cli_main(["search", *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
