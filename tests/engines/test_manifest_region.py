"""The manifest's region model (key ``region``: asymvq.models.region.RegionModel, for the C++ host): written by
every new manifest from the package's constants, checked when read (one ManifestError naming the key), and
optional, so a directory exported before it still loads. A hand-made decoder-only directory (a stand-in
artifact file), so no export runs."""
import json

import pytest

from asymvq.engines.manifest import ManifestError, manifest_region, new_manifest, read_manifest, write_manifest
from asymvq.models.latent_space import LatentSpace
from asymvq.models.region import AUTO_MIN_SPEEDUP, DEFAULT_MARGIN, REGION_MODEL, REGION_TIME_FIT, RegionModel

SPEC = {"dtype": "float32", "dims": ["batch", 4, "h", "w"], "min": [1, 4, 1, 1], "opt": [1, 4, 8, 8], "max": [2, 4, 16, 16]}


@pytest.fixture
def engines_dir(tmp_path):
    manifest = new_manifest(precision="fp32", source={"preset": "tiny"}, shapes={}, latent_space=LatentSpace())
    (tmp_path / "decoder.onnx").write_bytes(b"stand-in")
    digest = "0" * 64  # read_manifest checks the form; the hashes are verify_artifact's
    manifest["components"]["decoder-plain"] = {
        "weights_sha256": digest, "inputs": [{"name": "latent", **SPEC}], "outputs": [{"name": "sample", **SPEC}],
        "artifacts": {"onnx": {"path": "decoder.onnx", "files": {"decoder.onnx": digest}}}}
    write_manifest(tmp_path, manifest)
    return tmp_path


def _edit(root, edit):
    m = json.loads((root / "manifest.json").read_text())
    edit(m)
    (root / "manifest.json").write_text(json.dumps(m))  # NaN as Python's json writes it
    return root


def test_a_new_manifest_records_the_package_region_model(engines_dir):
    m = read_manifest(engines_dir)
    assert m["region"] == {"default_margin": DEFAULT_MARGIN, "time_fit": list(REGION_TIME_FIT),
                           "auto_min_speedup": AUTO_MIN_SPEEDUP}
    assert manifest_region(m) == REGION_MODEL == RegionModel(DEFAULT_MARGIN, REGION_TIME_FIT, AUTO_MIN_SPEEDUP)
    other = RegionModel(0, (0.1, 0.5), 2.0)
    assert RegionModel.from_dict(other.to_dict()) == other


def test_a_manifest_without_a_region_model_still_reads(engines_dir):
    m = read_manifest(_edit(engines_dir, lambda m: m.pop("region")))
    assert manifest_region(m) is None


def _set(key, value):
    return lambda m: m["region"].__setitem__(key, value)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(region=[4, [0, 1], 1.2]), r"region must be an object with exactly the keys \['default_margin', "
                                                  r"'time_fit', 'auto_min_speedup'\]"),
    (lambda m: m["region"].pop("time_fit"), "region must be an object with exactly the keys"),
    (lambda m: m["region"].update(extra=1), "region must be an object with exactly the keys"),
    (_set("default_margin", -1), r"region\.default_margin must be an integer >= 0, got -1$"),
    (_set("default_margin", 4.0), r"region\.default_margin must be an integer >= 0, got 4\.0"),
    (_set("default_margin", True), r"region\.default_margin must be an integer >= 0, got True"),
    (_set("time_fit", [0.99]), r"region\.time_fit must be two finite numbers \[a, b\]"),
    (_set("time_fit", [float("nan"), 1.0]), r"region\.time_fit must be two finite numbers"),
    (_set("time_fit", [10**400, 1.0]), r"region\.time_fit must be two finite numbers"),
    (_set("time_fit", "0.99"), r"region\.time_fit must be two finite numbers"),
    (_set("auto_min_speedup", 0), r"region\.auto_min_speedup must be a positive finite number, got 0$"),
    (_set("auto_min_speedup", False), r"region\.auto_min_speedup must be a positive finite number, got False"),
    (_set("auto_min_speedup", float("inf")), r"region\.auto_min_speedup must be a positive finite number, got inf"),
])
def test_a_bad_region_model_is_refused_naming_the_key(engines_dir, edit, match):
    with pytest.raises(ManifestError, match=r"^engines: .*manifest\.json: " + match):
        read_manifest(_edit(engines_dir, edit))
