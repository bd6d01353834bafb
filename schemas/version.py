"""The one version of explainstream, read from the installed package's metadata.

``pyproject.toml`` is the only place the number is written; the CLI's ``--version``, GET
/status, ``explainstream_build_info`` and every result's ``service_version`` read it here.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["DISTRIBUTION", "__version__"]

DISTRIBUTION = "explainstream"


def _read() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
        return "0+unknown"


__version__: str = _read()
