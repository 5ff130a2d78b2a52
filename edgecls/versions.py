"""Library versions recorded in run.json and edgecls.json (read from package metadata: nothing is imported)."""
from __future__ import annotations

import platform
from importlib import metadata

from edgecls import __version__


def library_versions(*distributions: str) -> dict:
    """edgecls, Python, platform, NumPy, and each named distribution that is installed."""
    out = {"edgecls": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for name in ("numpy", *distributions):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
