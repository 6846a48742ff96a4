"""Tests for data_preprocessor: sources, standardisation, pipelines, augmentation, safety."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import real_data

import data_preprocessor as dp

# --------------------------------------------------------------------------------------
# Helpers: archives in the standard formats
# --------------------------------------------------------------------------------------


def _py2_str(b: bytes) -> bytes:
    """SHORT_BINSTRING / BINSTRING: a Python 2 ``str`` (loaded as bytes with encoding="bytes")."""
    if len(b) < 256:
        return b"U" + bytes([len(b)]) + b
    return b"T" + struct.pack("<i", len(b)) + b


def _py2_int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    return b"J" + struct.pack("<i", v)


def _py2_uint8_array(a: np.ndarray) -> bytes:
    """A uint8 ndarray exactly as numpy 1 under Python 2 pickled it (protocol 2), like the CIFAR batches."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    out = b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
    out += _py2_int(0) + b"\x85" + _py2_str(b"b") + b"\x87R"  # _reconstruct(ndarray, (0,), 'b')
    out += b"(" + _py2_int(1) + b"(" + b"".join(_py2_int(s) for s in a.shape) + b"t"  # (1, shape,
    out += b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"  # dtype('u1', 0, 1)
    out += b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2 + _py2_int(0) + b"tb"
    out += b"\x89" + _py2_str(a.tobytes()) + b"tb"  # False, raw bytes) BUILD
    return out


def py2_pickle(d: dict) -> bytes:
    """Hand-assembled protocol-2 pickle of a dict in the format of the real CIFAR python batches."""

    def value(v) -> bytes:
        if isinstance(v, np.ndarray):
            return _py2_uint8_array(v)
        if isinstance(v, bytes):
            return _py2_str(v)
        if isinstance(v, list):
            return b"](" + b"".join(_py2_int(int(i)) for i in v) + b"e"
        raise TypeError(type(v))

    items = b"".join(_py2_str(k.encode()) + value(v) for k, v in d.items())
    return b"\x80\x02}(" + items + b"u."


def pixel_pattern(n: int, offset: int) -> np.ndarray:
    """(n, 3072) uint8 rows: plane c, row h, column w of image r holds (offset + 7r + 50c + 3h + w) % 256."""
    r, c, h, w = np.meshgrid(np.arange(n), np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    return ((offset + 7 * r + 50 * c + 3 * h + w) % 256).astype(np.uint8).reshape(n, 3072)


def expected_nhwc(rows: np.ndarray) -> np.ndarray:
    """Independent per-pixel mapping: x[n, h, w, c] = row[n][c*1024 + h*32 + w]."""
    n = rows.shape[0]
    out = np.empty((n, 32, 32, 3), np.uint8)
    for c in range(3):
        for h in range(32):
            for w in range(32):
                out[:, h, w, c] = rows[:, c * 1024 + h * 32 + w]
    return out


def add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(payload)
    tar.addfile(member, io.BytesIO(payload))


def write_cifar10(directory: Path, n_per_batch: int = 2, n_test: int = 3, serialize=py2_pickle, extra=None):
    """Tiny cifar-10-python.tar.gz; returns the (rows, labels) written for train and test."""
    rows_train, labels_train = [], []
    path = directory / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, "cifar-10-batches-py/batches.meta", py2_pickle({"num_cases_per_batch": [n_per_batch]}))
        for i in range(1, 6):
            rows = pixel_pattern(n_per_batch, offset=10 * i)
            labels = [(2 * i + j) % 10 for j in range(n_per_batch)]
            rows_train.append(rows)
            labels_train += labels
            batch = {"batch_label": b"training batch %d of 5" % i, "labels": labels, "data": rows}
            if extra and f"data_batch_{i}" in extra:
                batch = extra[f"data_batch_{i}"]
            add_member(tar, f"cifar-10-batches-py/data_batch_{i}", serialize(batch))
        rows_test = pixel_pattern(n_test, offset=200)
        rows_test[0, 1024 + 5 * 32 + 7] = 251  # a known pixel: image 0, green, row 5, column 7
        labels_test = [9 - j for j in range(n_test)]
        add_member(
            tar,
            "cifar-10-batches-py/test_batch",
            serialize({"batch_label": b"testing batch 1 of 1", "labels": labels_test, "data": rows_test}),
        )
    return np.concatenate(rows_train), np.array(labels_train), rows_test, np.array(labels_test)


def modern_pickle(protocol: int):
    """Serializer in the style of Python 3 / numpy 2 (bytes keys, numpy arrays pickled natively)."""

    def serialize(d: dict) -> bytes:
        return pickle.dumps({k.encode(): v for k, v in d.items()}, protocol=protocol)

    return serialize


def load_one_epoch(ds: tf.data.Dataset):
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def row_keys(x: np.ndarray) -> set:
    return {row.tobytes() for row in x.reshape(x.shape[0], -1)}


# --------------------------------------------------------------------------------------
# Synthetic source and pipelines
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, x_shape, width, label_format",
    [
        ("mnist", (784,), 10, "one_hot"),
        ("cifar10", (32, 32, 3), 10, "one_hot"),
        ("cifar100", (32, 32, 3), 100, "sparse"),
    ],
)
def test_synthetic_bundle_shapes_dtypes_and_labels(name, x_shape, width, label_format):
    bundle = dp.load_dataset(name, "synthetic", batch_size=48, synthetic_train=200, synthetic_test=104)
    assert bundle.label_format == label_format
    assert bundle.info is dp.DATASETS[name]
    assert bundle.info.num_classes == width
    assert (bundle.n_train, bundle.n_test) == (200, 104)
    assert bundle.steps_per_epoch == 5  # ceil(200 / 48)
    assert bundle.input_shape == x_shape

    assert int(bundle.train.cardinality()) == int(tf.data.INFINITE_CARDINALITY)  # a stream of epochs
    assert int(bundle.epoch(0).cardinality()) == 5
    assert int(bundle.test.cardinality()) == 3
    batches = list(bundle.epoch(0))
    assert len(batches) == 5
    assert [int(x.shape[0]) for x, _ in batches] == [48, 48, 48, 48, 8]  # last partial batch kept
    x, y = batches[0]
    assert x.dtype == tf.float32 and tuple(x.shape[1:]) == x_shape
    if label_format == "one_hot":
        assert y.dtype == tf.float32 and tuple(y.shape) == (48, width)
        np.testing.assert_array_equal(y.numpy().sum(axis=1), 1.0)
        assert set(np.unique(y.numpy())) == {0.0, 1.0}
    else:
        assert y.dtype == tf.int32 and tuple(y.shape) == (48,)

    x_test, y_test = load_one_epoch(bundle.test)
    assert x_test.shape == (104,) + x_shape
    classes = y_test.argmax(axis=1) if label_format == "one_hot" else y_test
    assert classes.min() >= 0 and classes.max() < width
    np.testing.assert_array_equal(classes, np.arange(104) % width)  # labels cycle, file order kept


def test_synthetic_cifar100_covers_all_classes_and_is_deterministic():
    x1, y1, xt1, yt1 = dp.load_arrays("cifar100", "synthetic", synthetic_train=300, synthetic_test=100, seed=3)
    x2, y2, _, _ = dp.load_arrays("cifar100", "synthetic", synthetic_train=300, synthetic_test=100, seed=3)
    x3, _, _, _ = dp.load_arrays("cifar100", "synthetic", synthetic_train=300, synthetic_test=100, seed=4)
    assert x1.dtype == np.uint8 and x1.shape == (300, 32, 32, 3) and xt1.shape == (100, 32, 32, 3)
    assert y1.dtype == np.int64 and set(y1) == set(range(100)) and set(yt1) == set(range(100))
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    xm, ym, _, _ = dp.load_arrays("mnist", "synthetic", synthetic_train=20, synthetic_test=10)
    assert xm.shape == (20, 28, 28, 1) and xm.dtype == np.uint8


def _nearest_mean_accuracy(f, y, ft, yt, num_classes):
    means = np.stack([f[y == c].mean(axis=0) for c in range(num_classes)])
    distances = (means**2).sum(axis=1)[None, :] - 2.0 * ft @ means.T
    return float((np.argmin(distances, axis=1) == yt).mean())


def test_synthetic_data_is_learnable_with_and_without_augmentation():
    # Nearest class mean (fit on train, scored on test) must beat chance (1%) by far.
    x, y, xt, yt = dp.load_arrays("cifar100", "synthetic", synthetic_train=512, synthetic_test=256)
    f, ft = dp.standardize_images(x).reshape(512, -1), dp.standardize_images(xt).reshape(256, -1)
    assert _nearest_mean_accuracy(f, y, ft, yt, 100) > 0.5
    # Also when fitted on the augmented training pipeline (the CIFAR-100 default).
    bundle = dp.load_dataset("cifar100", "synthetic", batch_size=128, synthetic_train=512, synthetic_test=256)
    fa, ya = load_one_epoch(bundle.epoch(0))
    assert _nearest_mean_accuracy(fa.reshape(512, -1), ya, ft, yt, 100) > 0.5


def test_bundle_trains_with_keras_and_beats_chance():
    import keras

    bundle = dp.load_dataset("mnist", "synthetic", batch_size=64, synthetic_train=512, synthetic_test=256)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(bundle.input_shape), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(bundle.train, epochs=3, steps_per_epoch=bundle.steps_per_epoch, shuffle=False, verbose=0)
    _, accuracy = model.evaluate(bundle.test, verbose=0)
    assert accuracy > 0.5  # chance is 0.1


def test_label_format_and_flatten_overrides():
    bundle = dp.load_dataset(
        "cifar10", "synthetic", batch_size=16, synthetic_train=32, synthetic_test=16,
        label_format="sparse", flatten=True,
    )
    x, y = next(iter(bundle.test))
    assert tuple(x.shape) == (16, 3072) and y.dtype == tf.int32 and tuple(y.shape) == (16,)
    bundle = dp.load_dataset(
        "cifar100", "synthetic", batch_size=16, synthetic_train=32, synthetic_test=16,
        label_format="one_hot", augment=True, flatten=True,
    )
    x, y = next(iter(bundle.train))
    assert tuple(x.shape) == (16, 3072) and y.dtype == tf.float32 and tuple(y.shape) == (16, 100)
    bundle = dp.load_dataset("mnist", "synthetic", batch_size=16, synthetic_train=32, synthetic_test=16, flatten=False)
    x, _ = next(iter(bundle.train))
    assert tuple(x.shape) == (16, 28, 28, 1)


def test_train_is_reshuffled_each_epoch_and_test_order_is_stable():
    bundle = dp.load_dataset("cifar10", "synthetic", batch_size=32, synthetic_train=128, synthetic_test=64, seed=1)
    x1, y1 = load_one_epoch(bundle.epoch(0))
    x2, y2 = load_one_epoch(bundle.epoch(1))
    assert x1.shape == x2.shape == (128, 32, 32, 3)
    assert not np.array_equal(x1, x2)  # a different order in the second epoch ...
    order1, order2 = np.lexsort(x1.reshape(128, -1).T), np.lexsort(x2.reshape(128, -1).T)
    np.testing.assert_array_equal(x1[order1], x2[order2])  # ... of the same examples
    np.testing.assert_array_equal(y1[order1], y2[order2])  # with their labels

    # The shuffle is seeded: a second bundle with the same seed yields the same epochs.
    again = dp.load_dataset("cifar10", "synthetic", batch_size=32, synthetic_train=128, synthetic_test=64, seed=1)
    np.testing.assert_array_equal(load_one_epoch(again.epoch(0))[0], x1)

    xt1, yt1 = load_one_epoch(bundle.test)
    xt2, yt2 = load_one_epoch(bundle.test)
    np.testing.assert_array_equal(xt1, xt2)
    np.testing.assert_array_equal(yt1, yt2)
    _, _, x_test_raw, _ = dp.load_arrays("cifar10", "synthetic", synthetic_train=128, synthetic_test=64, seed=1)
    np.testing.assert_allclose(xt1, dp.standardize_images(x_test_raw), atol=1e-6)  # file order, standardised


# --------------------------------------------------------------------------------------
# Standardisation
# --------------------------------------------------------------------------------------


def test_standardize_images_zero_mean_unit_std():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 32, 32, 3), dtype=np.uint8)
    out = dp.standardize_images(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1.0, atol=1e-4)


def test_standardize_images_matches_tensorflow_including_constant_image(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(7, 28, 28, 1), dtype=np.uint8)
    x[2] = 37  # constant image: std = 0, divided by 1/sqrt(784) instead
    x[5] = 0
    x[6, :, :14] = 255  # low-contrast / half-and-half image
    x[6, :, 14:] = 0
    monkeypatch.setattr(dp, "_STANDARDIZE_CHUNK", 3)  # exercise the chunk boundaries
    out = dp.standardize_images(x)
    expected = tf.image.per_image_standardization(tf.convert_to_tensor(x)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_array_equal(out[2], 0.0)
    np.testing.assert_array_equal(out[5], 0.0)

    x3 = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    expected3 = tf.image.per_image_standardization(tf.convert_to_tensor(x3)).numpy()
    np.testing.assert_allclose(dp.standardize_images(x3), expected3, atol=1e-5)


def test_standardize_images_rejects_single_vector():
    with pytest.raises(ValueError):
        dp.standardize_images(np.zeros(10, np.uint8))


# --------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------


def _is_crop_flip_of(out: np.ndarray, image: np.ndarray) -> bool:
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    h, w = image.shape[:2]
    for dy in range(9):
        for dx in range(9):
            crop = padded[dy : dy + h, dx : dx + w]
            if np.array_equal(out, crop) or np.array_equal(out, crop[:, ::-1]):
                return True
    return False


def test_augment_image_is_pad_crop_flip():
    x = dp.standardize_images(dp.load_arrays("cifar10", "synthetic", synthetic_train=16, synthetic_test=1)[0])
    outs = [dp.augment_image(tf.constant(img), tf.constant([i, 17], tf.int64)).numpy() for i, img in enumerate(x)]
    assert all(o.shape == (32, 32, 3) for o in outs)
    assert all(_is_crop_flip_of(o, img) for o, img in zip(outs, x))
    assert sum(not np.array_equal(o, img) for o, img in zip(outs, x)) >= 12


@pytest.mark.parametrize("name, augmented", [("cifar100", True), ("cifar10", False), ("mnist", False)])
def test_augmentation_default_on_only_for_cifar100(name, augmented):
    bundle = dp.load_dataset(name, "synthetic", batch_size=32, synthetic_train=96, synthetic_test=32)
    x_raw = dp.load_arrays(name, "synthetic", synthetic_train=96, synthetic_test=32)[0]
    originals = row_keys(dp.standardize_images(x_raw))
    x, _ = load_one_epoch(bundle.epoch(0))
    assert x.shape[0] == 96 and x.shape[1:] == bundle.input_shape
    unchanged = sum(key in originals for key in row_keys(x))
    if augmented:
        assert unchanged < 96 // 2
    else:
        assert unchanged == 96
    # The test set is never augmented.
    xt, _ = load_one_epoch(bundle.test)
    x_test_raw = dp.load_arrays(name, "synthetic", synthetic_train=96, synthetic_test=32)[2]
    np.testing.assert_allclose(xt.reshape(x_test_raw.shape), dp.standardize_images(x_test_raw), atol=1e-6)


def test_augmentation_can_be_switched():
    on = dp.load_dataset("cifar10", "synthetic", batch_size=32, synthetic_train=64, synthetic_test=8, augment=True)
    off = dp.load_dataset("cifar100", "synthetic", batch_size=32, synthetic_train=64, synthetic_test=8, augment=False)
    on_x, off_x = load_one_epoch(on.epoch(0))[0], load_one_epoch(off.epoch(0))[0]
    on_raw = dp.standardize_images(dp.load_arrays("cifar10", "synthetic", synthetic_train=64, synthetic_test=8)[0])
    off_raw = dp.standardize_images(dp.load_arrays("cifar100", "synthetic", synthetic_train=64, synthetic_test=8)[0])
    assert len(row_keys(on_x) & row_keys(on_raw)) < 32
    assert row_keys(off_x) == row_keys(off_raw)
    # Augmentation is redrawn every epoch (a new set of crops/flips, not only a new order).
    second = load_one_epoch(on.epoch(1))[0]
    assert row_keys(on_x) != row_keys(second)


def test_augment_true_on_mnist_raises():
    with pytest.raises(ValueError, match="mnist"):
        dp.load_dataset("mnist", "synthetic", augment=True, synthetic_train=8, synthetic_test=8)


# --------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------


def test_unknown_names_raise_value_error_listing_allowed():
    with pytest.raises(ValueError, match="cifar10.*cifar100.*mnist"):
        dp.load_dataset("imagenet", "synthetic")
    with pytest.raises(ValueError, match="tfds.*local.*synthetic"):
        dp.load_arrays("mnist", "s3")
    with pytest.raises(ValueError, match="one_hot"):
        dp.load_dataset("mnist", "synthetic", label_format="onehot")
    with pytest.raises(ValueError, match="batch_size"):
        dp.load_dataset("mnist", "synthetic", batch_size=0)


# --------------------------------------------------------------------------------------
# Local source
# --------------------------------------------------------------------------------------


def test_local_mnist_npz_round_trip(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    x_train = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    x_train[3, 20, 5] = 0
    x_train[3, 20, 6] = 222
    y_train, y_test = np.array([0, 1, 2, 3, 4, 9], np.uint8), np.array([5, 6, 7, 8], np.uint8)
    np.savez_compressed(tmp_path / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)

    xa, ya, xb, yb = dp.load_arrays("mnist", "local", str(tmp_path))
    assert xa.shape == (6, 28, 28, 1) and xa.dtype == np.uint8 and ya.dtype == np.int64
    monkeypatch.setenv("HOME", str(tmp_path.parent))  # data.data_dir: ~/... as the config accepts it
    np.testing.assert_array_equal(dp.load_arrays("mnist", "local", f"~/{tmp_path.name}")[0], xa)
    np.testing.assert_array_equal(xa[..., 0], x_train)
    np.testing.assert_array_equal(xb[..., 0], x_test)
    assert xa[3, 20, 6, 0] == 222
    np.testing.assert_array_equal(ya, y_train)
    np.testing.assert_array_equal(yb, y_test)

    bundle = dp.load_dataset("mnist", "local", tmp_path, batch_size=4)
    xt, yt = load_one_epoch(bundle.test)
    np.testing.assert_allclose(xt, dp.standardize_images(x_test[..., None]).reshape(4, 784), atol=1e-6)
    np.testing.assert_array_equal(yt, np.eye(10, dtype=np.float32)[y_test])


def test_py2_fixture_matches_real_cifar_pickle_structure():
    blob = py2_pickle({"labels": [1, 2], "data": pixel_pattern(2, 0)})
    globals_used = {arg for op, arg, _ in pickletools.genops(blob) if op.name == "GLOBAL"}
    assert globals_used == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    assert blob[:2] == b"\x80\x02"
    loaded = dp.restricted_loads(blob)
    assert set(loaded) == {b"labels", b"data"}
    assert loaded[b"data"].dtype == np.uint8 and loaded[b"data"].shape == (2, 3072)
    np.testing.assert_array_equal(loaded[b"data"], pixel_pattern(2, 0))


@pytest.mark.parametrize("serializer", ["py2", "protocol4", "protocol5"])
def test_local_cifar10_round_trip(tmp_path, serializer):
    serialize = {"py2": py2_pickle, "protocol4": modern_pickle(4), "protocol5": modern_pickle(5)}[serializer]
    rows_train, labels_train, rows_test, labels_test = write_cifar10(tmp_path, serialize=serialize)
    x_train, y_train, x_test, y_test = dp.load_arrays("cifar10", "local", str(tmp_path))
    assert x_train.shape == (10, 32, 32, 3) and x_test.shape == (3, 32, 32, 3)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    np.testing.assert_array_equal(x_train, expected_nhwc(rows_train))  # batches 1..5 in order
    np.testing.assert_array_equal(x_test, expected_nhwc(rows_test))
    assert x_test[0, 5, 7, 1] == 251  # green plane, row 5, column 7 -> NHWC [5, 7, 1]
    assert x_test[0, 5, 7, 0] != 251 and x_test[0, 7, 5, 1] != 251
    np.testing.assert_array_equal(y_train, labels_train)
    np.testing.assert_array_equal(y_test, labels_test)


def test_local_cifar100_round_trip(tmp_path):
    rows_train, rows_test = pixel_pattern(4, 1), pixel_pattern(2, 99)
    rows_train[2, 2 * 1024 + 31 * 32 + 0] = 3  # blue plane, row 31, column 0
    fine_train, fine_test = [99, 0, 57, 12], [42, 98]
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tar:
        add_member(tar, "cifar-100-python/meta", py2_pickle({"fine_label_names": b"x"}))
        add_member(
            tar, "cifar-100-python/train",
            py2_pickle({"data": rows_train, "fine_labels": fine_train, "coarse_labels": [1, 2, 3, 4]}),
        )
        add_member(
            tar, "cifar-100-python/test",
            modern_pickle(4)({"data": rows_test, "fine_labels": fine_test, "coarse_labels": [0, 0]}),
        )
    x_train, y_train, x_test, y_test = dp.load_arrays("cifar100", "local", str(tmp_path))
    np.testing.assert_array_equal(x_train, expected_nhwc(rows_train))
    np.testing.assert_array_equal(x_test, expected_nhwc(rows_test))
    assert x_train[2, 31, 0, 2] == 3
    np.testing.assert_array_equal(y_train, fine_train)  # fine labels, not coarse
    np.testing.assert_array_equal(y_test, fine_test)

    bundle = dp.load_dataset("cifar100", "local", str(tmp_path), batch_size=3)
    assert bundle.label_format == "sparse" and bundle.steps_per_epoch == 2
    _, yt = load_one_epoch(bundle.test)
    np.testing.assert_array_equal(yt, fine_test)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned.txt"
    with pytest.raises(pickle.UnpicklingError, match="system"):
        dp.restricted_loads(pickle.dumps({"data": _Evil(marker)}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="eval"):
        dp.restricted_loads(pickle.dumps((eval, ("1 + 1",))))
    with pytest.raises(pickle.UnpicklingError):
        dp.restricted_loads(pickle.dumps(_Evil(marker), protocol=5))
    assert not marker.exists()
    # The payload is real: the plain unpickler runs it (it writes the marker in tmp_path).
    pickle.loads(pickle.dumps(_Evil(marker)))
    assert marker.read_text().strip() == "pwned"


def test_tampered_cifar_archive_is_refused_without_side_effect(tmp_path):
    marker = tmp_path / "pwned.txt"
    evil = {"data_batch_3": {"data": _Evil(marker), "labels": [0, 1]}}
    write_cifar10(tmp_path, serialize=modern_pickle(4), extra=evil)
    with pytest.raises(dp.DataUnavailableError, match="data_batch_3") as excinfo:
        dp.load_arrays("cifar10", "local", str(tmp_path))
    assert isinstance(excinfo.value.__cause__, pickle.UnpicklingError)
    assert "system" in str(excinfo.value)  # refused because of os.system, not something else
    assert not marker.exists()


def test_missing_local_files_name_the_file_and_source(tmp_path):
    for name, filename in [("mnist", "mnist.npz"), ("cifar10", "cifar-10-python.tar.gz"),
                           ("cifar100", "cifar-100-python.tar.gz")]:
        with pytest.raises(dp.DataUnavailableError) as excinfo:
            dp.load_arrays(name, "local", str(tmp_path))
        message = str(excinfo.value)
        assert filename in message and "local" in message and str(tmp_path) in message
    missing_dir = tmp_path / "nope"
    with pytest.raises(dp.DataUnavailableError, match="nope.*cifar-10-python.tar.gz"):
        dp.load_dataset("cifar10", "local", str(missing_dir))
    with pytest.raises(dp.DataUnavailableError, match="mnist.npz"):
        dp.load_arrays("mnist", "local", None)


def test_incomplete_archive_names_missing_member(tmp_path):
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        add_member(tar, "cifar-10-batches-py/data_batch_1", py2_pickle({"labels": [1], "data": pixel_pattern(1, 0)}))
    with pytest.raises(dp.DataUnavailableError, match="test_batch"):
        dp.load_arrays("cifar10", "local", str(tmp_path))


@pytest.mark.skipif(real_data("mnist.npz") is None, reason="real MNIST not in SUPERMASK_DATA_DIR")
def test_real_mnist_from_local_source():
    bundle = dp.load_dataset("mnist", "local", str(real_data("mnist.npz").parent), batch_size=128)
    assert (bundle.n_train, bundle.n_test) == (60000, 10000)
    assert bundle.steps_per_epoch == 469
    x, y = next(iter(bundle.test))
    assert tuple(x.shape) == (128, 784) and tuple(y.shape) == (128, 10)
    np.testing.assert_allclose(x.numpy().mean(axis=1), 0.0, atol=1e-4)


# --------------------------------------------------------------------------------------
# tfds source (no network: tensorflow_datasets.load is replaced)
# --------------------------------------------------------------------------------------


def test_tfds_download_failure_points_to_local_source(monkeypatch, caplog):
    tfds = pytest.importorskip("tensorflow_datasets")
    calls = []

    def failing_load(*args, **kwargs):
        # the offline option is logged before the download starts (offline, tfds retries for minutes)
        calls.append((args, kwargs, [r.getMessage() for r in caplog.records]))
        raise ConnectionError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.setattr(tfds, "load", failing_load)
    with caplog.at_level("INFO", logger=dp.logger.name), pytest.raises(dp.DataUnavailableError) as excinfo:
        dp.load_dataset("cifar10", "tfds", "/tmp/some_tfds_dir")
    assert any("--data-source local" in m and "cifar-10-python.tar.gz" in m for m in calls[0][2])
    message = str(excinfo.value)
    assert "local" in message and "cifar-10-python.tar.gz" in message
    assert "storage.googleapis.com" in message
    assert message == f"{excinfo.value.reason} {excinfo.value.hint}" and "--data-source" in excinfo.value.hint
    assert "storage.googleapis.com" in excinfo.value.reason and "--data-source" not in excinfo.value.reason
    assert calls and calls[0][0][0] == "cifar10"
    assert calls[0][1]["split"] == ["train", "test"] and calls[0][1]["batch_size"] == -1
    assert calls[0][1]["as_supervised"] is True and calls[0][1]["data_dir"] == "/tmp/some_tfds_dir"

    with pytest.raises(dp.DataUnavailableError, match="mnist.npz"):
        dp.load_arrays("mnist", "tfds")


def test_a_missing_module_of_tfds_is_named_not_blamed_on_the_network(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def load_without(name):
        def load(*args, **kwargs):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return load

    monkeypatch.setattr(tfds, "load", load_without("importlib_resources.abc"))
    with pytest.raises(dp.DataUnavailableError) as excinfo:
        dp.load_dataset("mnist", "tfds")
    message = str(excinfo.value)
    assert ("needs the module 'importlib_resources.abc', which is not installed: pip install importlib_resources "
            "(or pip install -r requirements.txt)") in message
    assert "internet" not in message and "--data-source local" in message and "mnist.npz" in message
    monkeypatch.setattr(tfds, "load", load_without(None))
    with pytest.raises(dp.DataUnavailableError, match=r"module '\(unnamed\)', which is not installed \(.*\)\. Use"):
        dp.load_dataset("mnist", "tfds")


def test_the_modules_tfds_imports_to_download_are_installed():
    """tensorflow-datasets 4.9.10 imports importlib_resources when it downloads, without declaring it on Python
    >= 3.9: requirements.txt lists it, so the default source works on a fresh install."""
    import importlib.util

    assert importlib.util.find_spec("importlib_resources") is not None
    for requirements in ("requirements.txt", "requirements-gpu.txt"):
        lines = (Path(__file__).resolve().parents[1] / requirements).read_text().splitlines()
        assert any(line.startswith("importlib_resources") for line in lines), requirements


def test_tfds_success_path_converts_to_numpy(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(5, 28, 28, 1), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.int64)

    def fake_load(name, split, batch_size, as_supervised, data_dir):
        assert name == "mnist"
        return [(tf.constant(images), tf.constant(labels)), (tf.constant(images[:2]), tf.constant(labels[:2]))]

    monkeypatch.setattr(tfds, "load", fake_load)
    x_train, y_train, x_test, y_test = dp.load_arrays("mnist", "tfds")
    assert isinstance(x_train, np.ndarray) and x_train.dtype == np.uint8 and y_train.dtype == np.int64
    np.testing.assert_array_equal(x_train, images)
    np.testing.assert_array_equal(y_test, labels[:2])


def test_shuffle_false_keeps_file_order_every_epoch():
    bundle = dp.load_dataset("mnist", "synthetic", batch_size=50, synthetic_train=200, synthetic_test=20, seed=1,
                          shuffle=False)
    raw = dp.load_arrays("mnist", "synthetic", synthetic_train=200, synthetic_test=20, seed=1)
    first = np.concatenate([np.argmax(y, axis=1) for _, y in bundle.epoch(0)])
    second = np.concatenate([np.argmax(y, axis=1) for _, y in bundle.epoch(1)])
    np.testing.assert_array_equal(first, raw[1])
    np.testing.assert_array_equal(second, raw[1])


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])  # without and with augmentation
def test_every_epoch_is_a_pure_function_of_seed_and_epoch(name):
    """What a resumed run relies on: epoch e from a fresh stream equals epoch e of one long stream."""
    bundle = dp.load_dataset(name, "synthetic", batch_size=32, synthetic_train=96, synthetic_test=8, seed=5)
    stream = [x.numpy() for x, _ in bundle.train_from(0).take(3 * bundle.steps_per_epoch)]
    third = [x.numpy() for x, _ in bundle.train_from(2).take(bundle.steps_per_epoch)]
    for a, b in zip(stream[2 * bundle.steps_per_epoch:], third):
        np.testing.assert_array_equal(a, b)
    again = dp.load_dataset(name, "synthetic", batch_size=32, synthetic_train=96, synthetic_test=8, seed=5)
    np.testing.assert_array_equal(load_one_epoch(again.epoch(2))[0], np.concatenate(third))
    other = dp.load_dataset(name, "synthetic", batch_size=32, synthetic_train=96, synthetic_test=8, seed=6)
    assert not np.array_equal(load_one_epoch(other.epoch(2))[0], np.concatenate(third))


def test_epoch_permutation_is_a_permutation():
    order = dp.epoch_permutation(tf.range(1000, dtype=tf.int64), 1000, seed=3, epoch=7).numpy()
    assert sorted(order.tolist()) == list(range(1000)) and not np.array_equal(order, np.arange(1000))


def test_a_data_error_keeps_its_reason_and_hint_apart_through_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(dp.DataUnavailableError("no mnist.npz in /x.", "Use --data-dir.")))
    assert (error.reason, error.hint, str(error)) == ("no mnist.npz in /x.", "Use --data-dir.",
                                                      "no mnist.npz in /x. Use --data-dir.")
    assert str(dp.DataUnavailableError("only a reason.")) == "only a reason."
