"""Optional toolchains: the one-line error a user gets when an extra is missing.

``pip install asymvq`` runs the whole job on torch. ONNX, OpenVINO, Triton, TensorRT, Ray and
the HTTP server sit behind extras, imported only by the module that uses them; asking for one
that is not installed raises ``MissingExtraError`` naming the ``pip install`` that fixes it.
"""
from __future__ import annotations


class MissingExtraError(ImportError):
    """An optional toolchain is not installed; the message says which extra brings it."""


def missing_extra(extra: str, what: str, cause: BaseException | None = None) -> MissingExtraError:
    """The error to raise when ``what`` needs the ``extra`` (e.g. "onnx") and it failed to import."""
    detail = f" ({cause})" if cause is not None else ""
    return MissingExtraError(f"{what} needs the '{extra}' extra, which is not installed{detail}: "
                             f"pip install 'asymvq[{extra}]'")
