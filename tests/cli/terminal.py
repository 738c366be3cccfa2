"""Run bncli with stderr on a pseudo-terminal, as a person's shell would."""

from __future__ import annotations

import os
import subprocess
import sys


def run_with_terminal_stderr(args, cwd, env=None):
    """Run ``python -m bncli ARGS``; return (exit code, what it wrote to stderr)."""
    master, slave = os.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm", **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "bncli", *args],
        stdout=subprocess.PIPE,
        stderr=slave,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the pty is closed once everything is read
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return done.returncode, b"".join(chunks).decode(errors="replace")
