import numpy as np
import pytest

from spinebench.datamodules.labels import DEFAULT_NAMES
from spinebench.datamodules.shape_model import MODEL_PATH, load_shape_model


def _distances(curve: dict, a: str, b: str) -> np.ndarray:
    names = list(curve)
    pts = np.stack([curve[n] for n in names[names.index(a) : names.index(b) + 1]])
    return np.linalg.norm(np.diff(pts, axis=0), axis=1)


def test_samples_have_realistic_inter_vertebral_distances():
    model = load_shape_model()
    rng = np.random.default_rng(0)
    cervical, lumbar, drops = [], [], []
    for _ in range(30):
        curve = model.sample_centroids(rng)
        assert tuple(curve) == DEFAULT_NAMES
        cervical.append(_distances(curve, "C3", "C7"))
        lumbar.append(_distances(curve, "L1", "L5"))
        z = np.array([p[2] for p in curve.values()])
        drops.append(np.diff(z))
    assert 14.0 <= np.median(cervical) <= 20.0
    assert 29.0 <= np.median(lumbar) <= 40.0
    assert np.all(np.concatenate(drops) < 0)  # every level lies below the one above (LPS z = superior)
    assert 450.0 <= -np.median([d.sum() for d in drops]) <= 700.0  # C1 to S2 length


def test_transitional_levels_are_inserted_in_order():
    model = load_shape_model()
    t13 = model.sample_centroids(np.random.default_rng(1), transitional="T13")
    l6 = model.sample_centroids(np.random.default_rng(1), transitional="L6")
    assert list(t13)[18:21] == ["T12", "T13", "L1"] and len(t13) == 27
    assert list(l6)[23:26] == ["L5", "L6", "S1"] and len(l6) == 27
    assert t13["T12"][2] > t13["T13"][2] > t13["L1"][2]
    with pytest.raises(ValueError, match="transitional"):
        model.sample_centroids(np.random.default_rng(1), transitional="C8")


@pytest.mark.slow
@pytest.mark.needs_shared
def test_fit_reproduces_committed_model(shared_real):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "tools" / "fit_shape_model.py"
    spec = importlib.util.spec_from_file_location("fit_shape_model", script)
    fit_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit_module)
    fitted = fit_module.fit(shared_real)
    with np.load(MODEL_PATH) as committed:
        assert set(committed.files) == set(fitted)
        for key in committed.files:
            if committed[key].dtype.kind == "f":
                np.testing.assert_allclose(committed[key], fitted[key], atol=1e-4, err_msg=key)
            else:
                np.testing.assert_array_equal(committed[key], fitted[key], err_msg=key)
    assert int(fitted["n_scans"]) > 400  # CSI-2014 302 + VerSe, de-duplicated
    assert list(fitted["source_scan_counts"]) == [302, 80, 89]
