"""The installed versions of packages, asked of the installed distributions' metadata (nothing imported).

One probe for everything that writes versions down: the engines manifest's toolchain, the
profile's JSON and the benchmarks' results.
"""
from __future__ import annotations

from importlib import metadata


def package_versions(names) -> dict[str, str | None]:
    """``{name: version}`` for each distribution in ``names``; None for one that is not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
