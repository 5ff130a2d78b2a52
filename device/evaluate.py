"""CLI commands of this stage (registered by edgecls.cli). Keep heavy imports inside the functions."""
from __future__ import annotations


def register(app) -> None:
    pass
