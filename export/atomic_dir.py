"""Replace an engines directory in one step: build it beside, fsync it, rename it into place.

An export writes every file into a hidden sibling of the target (``.DIR.export-<pid>-<random>``,
same filesystem, so a rename moves it), fsyncs every file and folder there, writes
``manifest.json`` last, and then:

- target absent: ``rename(staged, DIR)``, atomic;
- target present: ``renameat2(RENAME_EXCHANGE)`` swaps the two names in one step (Linux 3.15+;
  ext4, xfs, btrfs, tmpfs, overlayfs), and the old directory, now under the hidden name, is removed.
  Where the exchange is refused (another OS, a filesystem without it) the old directory is renamed
  aside (``.DIR.replaced-...``) and the new one renamed in: a kill between the two renames leaves
  DIR absent, and the next export puts the old one back before it starts.

So a kill at any moment leaves DIR as it was or as the export made it (or absent, in that
fallback), never a mix. The hidden siblings a killed export leaves are refused by the loader
(``read_manifest``) and removed by the next export of the same DIR (``clean_stale``), unless the
process that made them still runs.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import secrets
import shutil
from pathlib import Path

from asymvq.engines.manifest import MANIFEST, fsync_dir, parse_staging_name, staging_name

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def export_target(out: str | Path) -> Path:
    """``out`` as the absolute path an export may replace, or a ValueError naming ``--out``."""
    out = Path(os.path.abspath(out))
    if out.is_symlink():  # replace what the link points at, keep the link
        out = out.resolve()
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents or out.parent == out:
        raise ValueError(f"--out: an export replaces the whole directory, so it cannot be the current directory "
                         f"or one above it; got {str(out)!r}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: expected a directory (new, empty or an engines directory), got the file {str(out)!r}")
    if out.is_dir() and not (out / MANIFEST).exists() and any(out.iterdir()):
        raise ValueError(f"--out: {str(out)!r} holds files but no {MANIFEST}; an export replaces the whole "
                         "directory, so give a new or empty directory, or an engines directory to update")
    return out


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clean_stale(out: Path) -> None:
    """Remove the hidden siblings that killed exports of ``out`` left; put back an old ``out`` that a killed
    fallback swap had moved aside (``out`` absent), so the export that follows can keep its components."""
    if not out.parent.is_dir():
        return
    for p in sorted(out.parent.iterdir()):
        parsed = parse_staging_name(p.name)
        if parsed is None or parsed[0] != out.name or _alive(parsed[2]):
            continue
        if parsed[1] == "replaced" and not out.exists() and (p / MANIFEST).is_file():
            os.rename(p, out)
            fsync_dir(out.parent)
            log.warning("%s: put back the directory a killed export had moved aside (%s)", out, p.name)
            continue
        log.info("%s: removing %s, left by a killed export", out, p.name)
        shutil.rmtree(p, ignore_errors=True)


def staging_dir(out: Path, kind: str = "export") -> Path:
    """A new empty hidden sibling of ``out`` to build the export in (``kind`` "export") or to move the old
    ``out`` to ("replaced"); made with the umask's mode, as a plain ``mkdir`` of ``out`` would be."""
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = out.parent / (staging_name(out.name, kind) + secrets.token_hex(4))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` with ``src``'s bytes: a hard link (no copy of a 3 GB UNet) or, across filesystems, a copy.

    Safe because nothing an export writes is written in place: every writer unlinks or creates
    its own files, so a link shared with the old directory is never modified through the new one."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (the data before the rename that publishes it)."""
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` atomically (renameat2 RENAME_EXCHANGE); False where that is not supported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2  # glibc 2.28+
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"exchanging {a} and {b}: {os.strerror(err)}")


def publish(staged: Path, out: Path) -> None:
    """Make the complete directory ``staged`` (manifest written) ``out`` in one step; remove the old ``out``."""
    fsync_tree(staged)
    if not out.exists():
        os.rename(staged, out)
        fsync_dir(out.parent)
        return
    if _exchange(staged, out):
        fsync_dir(out.parent)
        shutil.rmtree(staged)  # the old directory, under the hidden name: a kill here leaves it for clean_stale
        return
    aside = staging_dir(out, "replaced")
    os.rename(out, aside)  # over the empty placeholder
    os.rename(staged, out)
    fsync_dir(out.parent)
    shutil.rmtree(aside)
