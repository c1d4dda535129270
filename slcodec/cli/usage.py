"""The command line's exit codes and its usage error (one line, exit 2, like every other bad input)."""
from __future__ import annotations

import argparse
from ..errors import SlcodecError


EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
#: stdout closed by its reader: 128 + SIGPIPE, what a shell reports for a tool killed by it
EXIT_BROKEN_PIPE = 141


class UsageError(SlcodecError):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as for every other bad input
        sub = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        raise UsageError(f"{sub}{message}")
