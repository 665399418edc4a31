"""SDXL from an engines directory of tiny-sdxl: the checks of family_engine_checks.py."""
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from family_engine_checks import *  # noqa: F403 (the tests, collected here on this family's directory)
from family_engine_checks import export_family_dir


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    return export_family_dir("tiny-sdxl", tmp_path_factory)  # the file's cost (see family_engine_checks)
