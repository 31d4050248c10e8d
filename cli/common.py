"""What every command shares: typed errors become one clear line and a non-zero exit."""

from __future__ import annotations

import functools

import click

from p2p.runtime.errors import P2PError


def handle_errors(fn):
    """Map ``P2PError`` to ``ClickException`` (exit 1, 'Error: <one line>', no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except P2PError as e:
            raise click.ClickException(str(e)) from None

    return wrapper
