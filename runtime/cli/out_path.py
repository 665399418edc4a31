"""An output image path checked before the run it receives, not after (``asymvq inpaint`` and ``decode``).

A run can take minutes; an ``--out`` that cannot be written (a directory, an unknown extension, a
read-only or virtual filesystem such as /proc) is refused before any model is built. Writability is
probed by creating and removing a file where the output will go (the nearest existing directory):
permission bits say nothing to root, and /proc refuses files whatever they say.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import PIL.Image


def image_formats() -> dict[str, str]:
    """Extension -> the PIL format that can write it (``.png`` -> ``PNG``)."""
    PIL.Image.init()
    return {ext: fmt for ext, fmt in PIL.Image.registered_extensions().items() if fmt in PIL.Image.SAVE}


def check_image_out(path, arg: str = "--out") -> Path:
    """``path`` if an image can be written there; a ValueError naming ``arg`` otherwise."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{arg}: expected an image file path (e.g. out.png), got the directory {p}")
    formats = image_formats()
    if p.suffix.lower() not in formats:
        known = ", ".join(sorted(e for e in formats if e in (".png", ".jpg", ".jpeg", ".webp", ".tif", ".bmp")))
        raise ValueError(f"{arg}: expected an image file name ending in {known} (or another extension PIL writes), "
                         f"got {str(p)!r}")
    where = p.parent.absolute()
    while not where.exists():  # the directories _save_images will create
        where = where.parent
    if not where.is_dir():
        raise ValueError(f"{arg}: expected a path under a directory, got one under the file {where}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".asymvq-probe-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{arg}: expected a writable location, got {p} ({where}: {exc.strerror or exc})") from None
    return p
