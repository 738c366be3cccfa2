"""A click group that imports a command's module only when it runs.

``bncli --help`` and short commands then start without importing what other
commands need (pyarrow, h5py, rich).
"""

from __future__ import annotations

import importlib
from typing import Any

import click


class LazyGroup(click.Group):
    """Commands named ``{"name": "module:attribute"}``, imported on first use."""

    def __init__(
        self,
        *args: Any,
        lazy_commands: dict[str, str] | None = None,
        lazy_summaries: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands or {}
        self.lazy_summaries = lazy_summaries or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.lazy_commands) + sorted(super().list_commands(ctx))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy_commands.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(
        self, ctx: click.Context, formatter: click.HelpFormatter
    ) -> None:
        # Summaries come from the table so that --help imports no command.
        rows = [
            (name, self.lazy_summaries.get(name, "")) for name in self.lazy_commands
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)
