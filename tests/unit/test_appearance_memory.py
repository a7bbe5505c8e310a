"""The appearance stream's normal memory (plugins/appearance.py): fitting, scoring, pooling and its file."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from plugins.appearance import (
    MEMORY_VERSION,
    AppearanceError,
    AppearanceGridError,
    AppearanceMemories,
    AppearanceMemory,
    AppearanceMemoryError,
    MemoryExpectation,
    MemoryFitter,
    appearance_map,
    fit_memory,
    load_memory,
    memory_path,
    pool_factor,
    pool_to,
    save_memory,
)

SHA = "ab" * 32
SPEC = "5f" * 32  # the appearance engine's model_spec_sha256


def normal_features(
    n: int, *, channels: int = 16, grid: tuple[int, int] = (4, 6), seed: int = 0
) -> np.ndarray:
    """``(n, C, h, w)`` float32 features like a ReLU encoder's on a fixed scene: a per-position base plus
    correlated, low-rank variation (a few latent factors) and a little noise."""
    h, w = grid
    scene = np.random.default_rng(100)  # the scene: the same for every call
    mix = scene.standard_normal((4, channels))
    base = 2.0 * scene.standard_normal((channels, h, w))
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, h * w, 4)) @ mix + 0.3 * rng.standard_normal((n, h * w, channels))
    f = z.transpose(0, 2, 1).reshape(n, channels, h, w) + base
    return np.maximum(f, 0.0).astype(np.float32)


def fitted(n: int = 200, **kw: object) -> AppearanceMemory:
    return fit_memory(
        normal_features(n),
        encoder="stand-in",
        weights_sha256=SHA,
        model_spec_sha256=SPEC,
        camera="cam",
        **kw,  # type: ignore[arg-type]
    )


def expectation(memory: AppearanceMemory, **change: object) -> MemoryExpectation:
    fields: dict[str, object] = {
        "encoder": memory.encoder,
        "weights_sha256": memory.weights_sha256,
        "grid": memory.grid,
        "channels": memory.channels,
        "model_spec_sha256": memory.model_spec_sha256,
    }
    fields.update(change)
    return MemoryExpectation(**fields)  # type: ignore[arg-type]


# -- fitting and scoring ------------------------------------------------------------------------------------


def test_a_planted_unusual_patch_scores_highest_at_its_position() -> None:
    memory = fitted()
    frames = normal_features(8, seed=7)  # held-out normal frames
    normal = memory.score_map(frames)
    odd = frames.copy()
    odd[3, :, 2, 4] = np.random.default_rng(9).uniform(5.0, 8.0, size=odd.shape[1])  # another object
    scored = memory.score_map(odd)
    assert scored.shape == (8, 4, 6)
    assert scored.dtype == np.float32
    assert np.unravel_index(int(scored[3].argmax()), (4, 6)) == (2, 4)
    assert scored[3, 2, 4] > 1.5 * normal.max()  # well above every held-out normal position
    untouched = np.ones((4, 6), bool)
    untouched[2, 4] = False
    np.testing.assert_array_equal(scored[3][untouched], normal[3][untouched])  # per position: nothing leaks


def test_the_distance_is_the_mahalanobis_distance_of_each_position() -> None:
    memory = fitted(60)
    f = normal_features(1, seed=3)[0]
    got = memory.score_map(f)
    assert got.shape == (4, 6)
    for i, j in ((0, 0), (3, 5), (1, 2)):
        p = i * 6 + j
        d = f[:, i, j].astype(np.float64) - memory.mean[p]
        want = np.sqrt(d @ memory.inv_cov[p].astype(np.float64) @ d)
        assert got[i, j] == pytest.approx(want, rel=1e-4)
    # One frame and a batch of one give the same map (the two einsum paths).
    np.testing.assert_allclose(memory.score_map(np.stack([f, f]))[1], got, rtol=1e-5)


def test_the_fit_is_the_regularised_sample_covariance_and_streaming_equals_one_shot() -> None:
    feats = normal_features(90)
    one = fit_memory(feats, encoder="e", weights_sha256=SHA, batch=1000)
    fitter = MemoryFitter()
    for part in (feats[:1], feats[1:40], feats[40:41], feats[41:]):
        fitter.add(part[0] if len(part) == 1 else part)  # single (C, h, w) frames too
    streamed = fitter.finalize(encoder="e", weights_sha256=SHA)
    assert streamed.n_frames == one.n_frames == 90
    np.testing.assert_allclose(streamed.mean, one.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(streamed.inv_cov, one.inv_cov, rtol=1e-4, atol=1e-4)
    # Against numpy's covariance of one position, + eps I.
    x = feats[:, :, 1, 2].astype(np.float64)  # position 1*6 + 2
    cov = np.cov(x, rowvar=False) + 0.01 * np.eye(16)
    np.testing.assert_allclose(one.mean[8], x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(one.inv_cov[8], np.linalg.inv(cov), rtol=1e-3, atol=1e-3)


def test_two_folds_merged_give_the_memory_of_all_frames() -> None:
    feats = normal_features(60)
    halves = [MemoryFitter(), MemoryFitter()]
    halves[0].add(feats[:25])
    halves[1].add(feats[25:])
    merged = halves[0].merged(halves[1])
    assert (merged.n_frames, halves[0].n_frames) == (60, 25)  # the folds are left as they were
    both = merged.finalize(encoder="e", weights_sha256=SHA)
    one = fit_memory(feats, encoder="e", weights_sha256=SHA)
    np.testing.assert_allclose(both.mean, one.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(both.inv_cov, one.inv_cov, rtol=1e-4, atol=1e-4)
    fold = halves[0].finalize(encoder="e", weights_sha256=SHA)
    np.testing.assert_allclose(fold.mean, feats[:25].mean(axis=0).reshape(16, 24).T, rtol=1e-6)
    other = MemoryFitter()
    other.add(normal_features(3, grid=(2, 3)))
    with pytest.raises(AppearanceError, match=r"cannot merge fitters of 16 x 4x6 and 16 x 2x3 features"):
        halves[0].merged(other)


def test_a_fold_taken_from_the_whole_gives_the_memory_of_the_other_folds() -> None:
    feats = normal_features(60)
    folds = [MemoryFitter() for _ in range(3)]
    for i, fitter in enumerate(folds):
        fitter.add(feats[20 * i : 20 * (i + 1)])
    whole = folds[0].merged(folds[1]).merged(folds[2])
    held = whole.without(folds[1])  # what calibration scores fold 1 with
    assert (held.n_frames, whole.n_frames) == (40, 60)  # the whole is left as it was
    got = held.finalize(encoder="e", weights_sha256=SHA)
    want = fit_memory(np.concatenate([feats[:20], feats[40:]]), encoder="e", weights_sha256=SHA)
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.inv_cov, want.inv_cov, rtol=1e-4, atol=1e-4)
    with pytest.raises(AppearanceError, match="cannot take 60 frames from a fitter of 40"):
        held.without(whole)
    other = MemoryFitter()
    other.add(normal_features(3, grid=(2, 3)))
    with pytest.raises(AppearanceError, match=r"a fitter of 16 x 2x3 features from one of 16 x 4x6"):
        whole.without(other)


def test_shrinkage_pulls_each_covariance_toward_the_pooled_one() -> None:
    feats = normal_features(50)
    memory = fit_memory(feats, encoder="e", weights_sha256=SHA, shrinkage=0.5, eps=0.1)
    covs = np.stack([np.cov(feats[:, :, p // 6, p % 6].astype(np.float64), rowvar=False) for p in range(24)])
    want = 0.5 * covs[5] + 0.5 * covs.mean(axis=0) + 0.1 * np.eye(16)
    np.testing.assert_allclose(memory.inv_cov[5], np.linalg.inv(want), rtol=1e-3, atol=1e-4)
    assert (memory.eps, memory.shrinkage) == (0.1, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"eps": 0.0}, "eps must be > 0"), ({"shrinkage": 1.5}, r"shrinkage must be in \[0, 1\]")],
)
def test_bad_fit_settings_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(AppearanceError, match=match):
        fit_memory(normal_features(5), encoder="e", weights_sha256=SHA, **kwargs)  # type: ignore[arg-type]


def test_bad_features_are_refused_with_their_shape() -> None:
    fitter = MemoryFitter()
    with pytest.raises(AppearanceError, match="at least 2 frames, got 0"):
        fitter.finalize(encoder="e", weights_sha256=SHA)
    fitter.add(normal_features(1))
    with pytest.raises(AppearanceError, match="at least 2 frames, got 1"):
        fitter.finalize(encoder="e", weights_sha256=SHA)
    with pytest.raises(AppearanceError, match=r"features are 16 x 4x5, earlier batches were 16 x 4x6"):
        fitter.add(np.zeros((2, 16, 4, 5), np.float32))
    with pytest.raises(AppearanceError, match="finite"):
        fitter.add(np.full((1, 16, 4, 6), np.nan, np.float32))
    with pytest.raises(
        AppearanceError, match=r"features must be \(C, h, w\) or \(N, C, h, w\) with C, h, w = 16"
    ):
        fitted(20).score_map(np.zeros((8, 4, 6), np.float32))


# -- one grid for every stream ------------------------------------------------------------------------------


def test_pool_to_keeps_each_blocks_highest_value() -> None:
    m = np.arange(24, dtype=np.float32).reshape(4, 6)
    np.testing.assert_array_equal(pool_to(m, (2, 3)), [[7, 9, 11], [19, 21, 23]])
    np.testing.assert_array_equal(pool_to(m, (4, 6)), m)
    batch = np.stack([m, -m])
    np.testing.assert_array_equal(pool_to(batch, (2, 2))[1], [[0, -3], [-12, -15]])
    assert pool_factor((18, 24), (9, 12)) == (2, 2)
    big = np.zeros((18, 24), np.float32)
    big[17, 0] = 5.0
    assert pool_to(big, (9, 12))[8, 0] == 5.0


@pytest.mark.parametrize("grid", [(3, 3), (4, 4), (0, 2)])
def test_pool_to_refuses_a_grid_that_does_not_divide_the_map(grid: tuple[int, int]) -> None:
    with pytest.raises(
        AppearanceGridError, match=rf"an 4x6 map cannot be max-pooled onto a {grid[0]}x{grid[1]}"
    ):
        pool_to(np.zeros((4, 6), np.float32), grid)


def test_appearance_map_scores_then_pools() -> None:
    memory = fitted(40)
    f = normal_features(2, seed=5)
    np.testing.assert_array_equal(appearance_map(memory, f, (2, 3)), pool_to(memory.score_map(f), (2, 3)))


# -- the file -----------------------------------------------------------------------------------------------


def test_memory_path_is_beside_the_calibration_file() -> None:
    assert memory_path("calib/gate-1.json") == Path("calib/gate-1.appearance.npz")
    assert memory_path(Path("/x/cam.JSON")) == Path("/x/cam.appearance.npz")
    assert memory_path("/x/cam.cal") == Path("/x/cam.cal.appearance.npz")


def test_save_and_load_round_trip_with_a_float16_inverse(tmp_path: Path) -> None:
    memory = fitted(200)
    path = tmp_path / "calib" / "cam.appearance.npz"
    size = save_memory(memory, path)
    assert size == path.stat().st_size
    # The float16 inverse takes half its float32 bytes; the header and the mean are small.
    assert size < 0.5 * memory.inv_cov.nbytes + memory.mean.nbytes + 4096
    assert [p.name for p in path.parent.iterdir()] == ["cam.appearance.npz"]  # no temp file left
    loaded = load_memory(path, expectation(memory))
    assert (loaded.camera, loaded.encoder, loaded.weights_sha256) == ("cam", "stand-in", SHA)
    assert loaded.model_spec_sha256 == SPEC
    assert (loaded.grid, loaded.channels, loaded.n_frames) == ((4, 6), 16, 200)
    assert (loaded.eps, loaded.shrinkage) == (memory.eps, memory.shrinkage)
    assert loaded.fitted == memory.fitted
    assert loaded.fitted.endswith("+00:00")
    np.testing.assert_array_equal(loaded.mean, memory.mean)
    assert loaded.inv_cov.dtype == np.float32
    # What the float16 round trip costs: held-out normal frames and an unusual one move by < 0.5 %.
    frames = normal_features(50, seed=11)
    frames[0, :, 1, 1] += 6.0
    before, after = memory.score_map(frames), loaded.score_map(frames)
    assert float(np.max(np.abs(after - before) / before)) < 5e-3


def test_a_memory_of_another_engine_grid_or_channels_is_refused_naming_the_file(tmp_path: Path) -> None:
    memory = fitted(30)
    path = tmp_path / "cam.appearance.npz"
    save_memory(memory, path)
    cases = {
        "weights": (
            expectation(memory, weights_sha256="cd" * 32),
            "encoder weights sha256 abababababab, the engine's is cdcdcdcdcdcd (the engine changed)",
        ),
        "encoder": (
            expectation(memory, encoder="clip-vit-b16"),
            "encoder 'stand-in', the engine is 'clip-vit-b16'",
        ),
        # Other taps, projection or frame size: the same grid and channels, other features.
        "spec": (
            expectation(memory, model_spec_sha256="e1" * 32),
            "encoder spec sha256 5f5f5f5f5f5f, the engine's is e1e1e1e1e1e1 (its taps, projection or frame "
            "size changed)",
        ),
        "grid": (expectation(memory, grid=(8, 12)), "feature grid 4x6, the engine gives 8x12"),
        "channels": (expectation(memory, channels=128), "16 channels, the engine gives 128"),
    }
    for expect, phrase in cases.values():
        with pytest.raises(AppearanceMemoryError) as info:
            load_memory(path, expect)
        message = str(info.value)
        assert message.startswith(f"appearance memory {path}: fitted for another appearance engine")
        assert phrase in message
        assert message.endswith("re-run zsad calibrate for this camera")
    load_memory(path)  # without an expectation it is read as it is


def _rewrite(path: Path, **replace: object) -> None:
    """Rewrite ``path``'s npz with some arrays replaced (meta given as a dict)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    for key, value in replace.items():
        arrays[key] = np.array(json.dumps(value)) if key == "meta" else np.asarray(value)
    with path.open("wb") as f:
        np.savez(f, **arrays)


def _meta(path: Path) -> dict[str, object]:
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"][()]))  # type: ignore[no-any-return]


def test_damaged_or_foreign_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    memory = fitted(30)
    good = tmp_path / "good.npz"
    save_memory(memory, good)
    data = good.read_bytes()

    def refused(path: Path, *phrases: str) -> None:
        with pytest.raises(AppearanceMemoryError) as info:
            load_memory(path, expectation(memory))
        message = str(info.value)
        assert message.startswith(f"appearance memory {path}: ")
        for phrase in phrases:
            assert phrase in message

    refused(tmp_path / "missing.npz", "no such file")
    for cut in (len(data) // 2, len(data) - 30, 10):
        truncated = tmp_path / f"truncated-{cut}.npz"
        truncated.write_bytes(data[:cut])
        refused(truncated, "cannot be read (truncated or corrupt", "re-run zsad calibrate for this camera")
    flipped = bytearray(data)
    i = data.index(memory.inv_cov.astype(np.float16).tobytes()[:64]) + 100  # inside the inverse's bytes
    flipped[i] ^= 0xFF
    corrupt = tmp_path / "flipped.npz"
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(AppearanceMemoryError, match=r"corrupt|sha256"):  # zip CRC or our hash, both name it
        load_memory(corrupt)
    for version in (1, 3, 0, None, "2"):
        path = tmp_path / f"version-{version}.npz"
        path.write_bytes(data)
        _rewrite(path, meta={**_meta(path), "version": version})
        refused(path, f"unsupported version {version!r} (this zsad reads version {MEMORY_VERSION})")
    infinite = tmp_path / "infinite.npz"  # a header number no integer holds: an OverflowError escaped
    infinite.write_bytes(data)
    _rewrite(infinite, meta={**_meta(infinite), "n_frames": float("inf")})
    refused(infinite, "its header or arrays are inconsistent", "re-run zsad calibrate for this camera")
    edited = tmp_path / "edited.npz"
    edited.write_bytes(data)
    with np.load(edited) as d:
        mean = d["mean"] + 1.0
    _rewrite(edited, mean=mean)
    refused(edited, "do not match their recorded sha256 (the file is corrupt)")
    other = tmp_path / "other.npz"
    np.savez(other, W=np.zeros(3))
    refused(other, "lacks ['inv_cov', 'mean', 'meta']: not an appearance memory")
    not_zip = tmp_path / "text.npz"
    not_zip.write_text("hello")
    refused(not_zip, "cannot be read")
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    refused(folder, "cannot be read")
    assert zipfile.is_zipfile(good)


def test_a_version_1_memory_without_the_engine_spec_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """Memories written before the header recorded the engine's spec hash (version 1) cannot say which
    taps or projection they were fitted on: refused by name, with the command that makes a new one."""
    memory = fitted(30)
    path = tmp_path / "cam.appearance.npz"
    save_memory(memory, path)
    meta = _meta(path)
    del meta["model_spec_sha256"]
    _rewrite(path, meta={**meta, "version": 1})
    with pytest.raises(AppearanceMemoryError) as info:
        load_memory(path, expectation(memory))
    assert str(info.value) == (
        f"appearance memory {path}: unsupported version 1 (this zsad reads version 2); "
        "re-run zsad calibrate for this camera"
    )
    # A current header without the field is damaged, and says so.
    _rewrite(path, meta={**meta, "version": MEMORY_VERSION})
    with pytest.raises(
        AppearanceMemoryError, match=r"its header or arrays are inconsistent .*model_spec_sha256"
    ):
        load_memory(path)


def test_a_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "cam.appearance.npz"
    save_memory(fitted(20), path)
    before = path.read_bytes()
    tiny = fitted(20)
    tiny.inv_cov[0, 0, 0] = 1e6  # does not fit float16 (an eps far too small would do this)
    with pytest.raises(AppearanceError, match="does not fit float16"):
        save_memory(tiny, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_the_registry_replaces_and_forgets_a_cameras_memory() -> None:
    memories = AppearanceMemories()
    a, b = fitted(10), fitted(12)
    memories.set("cam", a)
    memories.set("cam", b)
    memories.set("other", a)
    assert memories.get("cam") is b
    assert len(memories) == 2
    memories.remove("cam")
    memories.remove("never")
    assert memories.get("cam") is None
    assert memories.cameras() == ["other"]
