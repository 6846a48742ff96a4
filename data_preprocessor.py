"""MNIST, CIFAR-10 and CIFAR-100 as ``tf.data`` pipelines (numpy batches on Keras' other backends).

Three sources provide the raw arrays (:func:`load_arrays`):

* ``"tfds"``: ``tensorflow_datasets.load`` (needs internet the first time).  A
  failed download raises :class:`DataUnavailableError` telling the user to
  switch to the ``local`` source and which file to put in ``data_dir``.
* ``"local"``: a directory holding the standard archives: ``mnist.npz``
  (keys ``x_train``, ``y_train``, ``x_test``, ``y_test``),
  ``cifar-10-python.tar.gz`` and ``cifar-100-python.tar.gz`` (the "python
  version" archives of the CIFAR web page).  Tar members are read in memory,
  never extracted, and the pickled batches are loaded with a restricted
  unpickler that refuses every global except a small numpy allow-list (see
  :class:`RestrictedUnpickler`), so a tampered archive cannot run code.
* ``"synthetic"``: small, deterministic, learnable random data of the real
  shapes and class counts (for tests and smoke runs).

Preprocessing (:func:`load_dataset`), following the reference code of the
paper (section 4.4):

* every image is standardised once, in numpy, with the formula of
  ``tf.image.per_image_standardization`` (this precomputation is the "cache");
* MNIST is flattened to 784 features by default;
* labels are one-hot float32 (MNIST, CIFAR-10) or sparse int32 (CIFAR-100) by
  default; the trainer must use categorical vs. sparse categorical
  cross-entropy accordingly;
* the training set is a stream of epochs: epoch e is a pseudo-random
  permutation of all examples that is a pure function of (seed, e)
  (``shuffle=False``: the file order), optionally augmented per example
  (zero-pad 4 pixels on every side, random 32x32 crop, random horizontal flip,
  seeded by (seed, e, position); after standardisation; on by default for
  CIFAR-100 only), batched (last partial batch kept) and prefetched. A run
  resumed at epoch e therefore sees exactly the data of an uninterrupted run.
  The test set is only batched and prefetched.

TensorFlow is imported by the functions that build pipelines, not by this
module, so the config schema can read the dataset table without it. When
Keras runs on another backend (``KERAS_BACKEND=jax``, e.g. a GPU machine
without TensorFlow), the pipelines are numpy generators of batches of the
same kind (epoch order and augmentation pure functions of (seed, e)); numpy's
generator, not TensorFlow's stateless ops, draws the order and the
augmentation there, so the same seed gives another order than on TensorFlow.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging
import math
import os
import pickle
import tarfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import backends

logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "SOURCES",
    "LABEL_FORMATS",
    "DataUnavailableError",
    "DatasetInfo",
    "DataBundle",
    "RestrictedUnpickler",
    "restricted_loads",
    "load_arrays",
    "standardize_images",
    "augment_image",
    "load_dataset",
]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset.

    ``input_shape`` is the shape of one image (H, W, C), also for MNIST, which
    the pipeline flattens to 784 features by default (see
    :attr:`DataBundle.input_shape` for the shape the model actually receives).
    ``n_train``/``n_test`` are the sizes of the real dataset; ``local_file``
    is the archive the ``local`` source expects in ``data_dir``.
    """

    name: str
    input_shape: tuple
    num_classes: int
    n_train: int
    n_test: int
    local_file: str


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", (28, 28, 1), 10, 60000, 10000, "mnist.npz"),
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 10, 50000, 10000, "cifar-10-python.tar.gz"),
    "cifar100": DatasetInfo("cifar100", (32, 32, 3), 100, 50000, 10000, "cifar-100-python.tar.gz"),
}

SOURCES = ("tfds", "local", "synthetic")
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 2048, 512  # default sizes of the synthetic source (config data.synthetic_*)
LABEL_FORMATS = ("one_hot", "sparse")

_DEFAULT_LABEL_FORMAT = {"mnist": "one_hot", "cifar10": "one_hot", "cifar100": "sparse"}
_DEFAULT_AUGMENT = {"mnist": False, "cifar10": False, "cifar100": True}

# Members of the CIFAR "python version" archives: (train members, test member, label key).
_CIFAR_MEMBERS = {
    "cifar10": (
        tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
        "cifar-10-batches-py/test_batch",
        "labels",
    ),
    "cifar100": (
        ("cifar-100-python/train",),
        "cifar-100-python/test",
        "fine_labels",
    ),
}

_PAD = 4  # augmentation: zero padding on every side before the random crop
_STANDARDIZE_CHUNK = 2048  # images per chunk in standardize_images


class DataUnavailableError(RuntimeError):
    """The requested data cannot be obtained; the message tells the user what to do.

    str(error) is `reason` followed by `hint`. The hint names the config keys and the looper's flags; a script
    with another interface (the minimal example) prints `reason` with its own hint instead.
    """

    def __init__(self, reason: str, hint: str = ""):
        super().__init__(reason, hint)  # both in args: a pickled copy keeps them apart
        self.reason = reason
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.reason} {self.hint}".strip()


# --------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------


def _check_dataset(dataset: str) -> DatasetInfo:
    if dataset not in DATASETS:
        raise ValueError(
            f"Unknown dataset {dataset!r}; allowed names: {', '.join(sorted(DATASETS))}."
        )
    return DATASETS[dataset]


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"Unknown data source {source!r}; allowed sources: {', '.join(SOURCES)}.")


def _offline_hint(info: DatasetInfo) -> str:
    return (
        "Use the offline source instead: set data.source: local and data.data_dir: DIR "
        f"(or --data-source local --data-dir DIR), where DIR holds {info.local_file}."
    )


# --------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------


def _numpy_global(module_names: tuple[str, ...], name: str) -> Any:
    """Resolve a numpy internal (its module moved from numpy.core to numpy._core in numpy 2)."""
    import importlib

    for module_name in module_names:
        try:
            return getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            continue
    return None


def _build_allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = _numpy_global(("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct")
    frombuffer = _numpy_global(("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module_name in ("numpy.core.multiarray", "numpy._core.multiarray"):
        if reconstruct is not None:
            allowed[(module_name, "_reconstruct")] = reconstruct
    for module_name in ("numpy.core.numeric", "numpy._core.numeric"):
        if frombuffer is not None:
            allowed[(module_name, "_frombuffer")] = frombuffer
    return allowed


_ALLOWED_GLOBALS = _build_allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR python batches that cannot be made to run code.

    A pickle can only call something through ``find_class`` (opcodes GLOBAL,
    STACK_GLOBAL, INST, OBJ, ...); builtin containers, bytes, strings and
    numbers need none.  ``find_class`` is therefore overridden to refuse every
    global except an explicit allow-list of numpy array reconstruction
    functions.  The allow-list is needed because the real CIFAR batches (Python
    2, pickle protocol 2) store ``data`` as a numpy uint8 array: the pickle
    references ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
    ``numpy.dtype`` (and the raw pixels as a py2 string, loaded as bytes with
    ``encoding="bytes"``).  Allowed, and nothing else:

    * ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``
      (the numpy 1 and numpy 2 names of the same function),
    * ``numpy.ndarray``, ``numpy.dtype``,
    * ``numpy.core.numeric._frombuffer`` / ``numpy._core.numeric._frombuffer``
      (used instead of ``_reconstruct`` by numpy arrays pickled with protocol 5,
      Python 3's default, should an archive be re-pickled).

    These only build arrays and dtypes from plain data; an object-dtype array's
    elements are themselves loaded by this same restricted unpickler.  Anything
    else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) raises
    :class:`pickle.UnpicklingError`.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"Refusing to unpickle global '{module}.{name}': only numpy array "
                "reconstruction is allowed in dataset pickles (tampered or unexpected archive?)."
            ) from None


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (``encoding="bytes"`` for py2 pickles)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


# --------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------


def _as_uint8(x: Any, what: str) -> np.ndarray:
    """Convert pixel data (ndarray, bytes or list) to a uint8 array, checking the range."""
    if isinstance(x, (bytes, bytearray)):
        return np.frombuffer(bytes(x), dtype=np.uint8)
    arr = np.asarray(x)
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.integer) or (arr.size and (arr.min() < 0 or arr.max() > 255)):
        raise DataUnavailableError(f"{what}: pixel data must be integers in [0, 255], got dtype {arr.dtype}.")
    return arr.astype(np.uint8)


def _as_labels(y: Any, num_classes: int, n: int, what: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataUnavailableError(f"{what}: expected {n} labels, got shape {arr.shape}.")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= num_classes):
        raise DataUnavailableError(f"{what}: labels must be integers in [0, {num_classes}).")
    return arr.astype(np.int64)


def _dict_get(d: dict, key: str, what: str) -> Any:
    for k in (key.encode("ascii"), key):
        if k in d:
            return d[k]
    raise DataUnavailableError(f"{what}: key {key!r} missing (found keys {sorted(map(repr, d))}).")


def local_archive_problem(dataset: str, data_dir: str | os.PathLike | None) -> str | None:
    """Why the local source cannot read `dataset` from `data_dir` (`~` expanded), or None when its archive is
    there. The config's validation and the loader both ask this."""
    info = DATASETS[dataset]
    if not data_dir:
        return f"the local source needs data_dir, a folder holding {info.local_file} (e.g. ~/datasets)"
    folder = os.path.expanduser(os.fspath(data_dir))
    if not os.path.isdir(folder):
        return f"directory {os.fspath(data_dir)} does not exist; it must hold {info.local_file}"
    if not os.path.isfile(os.path.join(folder, info.local_file)):
        return (f"{os.fspath(data_dir)} holds no {info.local_file}: put the standard archive there (or use the "
                f"tfds source with internet)")
    return None


def _local_path(info: DatasetInfo, data_dir: str | os.PathLike | None) -> str:
    problem = local_archive_problem(info.name, data_dir)
    if problem:
        raise DataUnavailableError(problem, "(data.data_dir, or --data-dir, of the 'local' source)")
    return os.path.join(os.path.expanduser(os.fspath(data_dir)), info.local_file)


def _load_local_mnist(path: str, info: DatasetInfo):
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in ("x_train", "y_train", "x_test", "y_test"):
                if key not in npz.files:
                    raise DataUnavailableError(
                        f"{path}: key {key!r} missing (found {npz.files}); expected the standard mnist.npz."
                    )
                arrays[key] = npz[key]
    except DataUnavailableError:
        raise
    except (OSError, ValueError) as exc:  # not a zip / needs pickle / truncated
        raise DataUnavailableError(f"Could not read {path} as mnist.npz: {exc}") from exc
    out = []
    for split in ("train", "test"):
        x = _as_uint8(arrays[f"x_{split}"], path)
        if x.ndim == 3:
            x = x[..., None]
        if x.shape[1:] != info.input_shape:
            raise DataUnavailableError(
                f"{path}: x_{split} has shape {x.shape}, expected (N, 28, 28) or (N, 28, 28, 1)."
            )
        y = _as_labels(arrays[f"y_{split}"], info.num_classes, x.shape[0], f"{path}: y_{split}")
        out += [x, y]
    return tuple(out)


def _read_tar_members(path: str, names: tuple[str, ...]) -> dict[str, bytes]:
    """Read the named regular members of a (gzipped) tar in memory, in one sequential pass."""
    wanted = set(names)
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name in wanted and member.isfile():
                    fileobj = tar.extractfile(member)
                    if fileobj is not None:
                        found[name] = fileobj.read()
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataUnavailableError(f"Could not read the archive {path}: {exc}") from exc
    missing = sorted(wanted - set(found))
    if missing:
        raise DataUnavailableError(
            f"Archive {path} lacks the member(s) {', '.join(missing)}; is it the standard python-version archive?"
        )
    return found


def _decode_cifar_batch(raw: bytes, label_key: str, num_classes: int, what: str):
    try:
        batch = restricted_loads(raw)
    except pickle.UnpicklingError as exc:
        raise DataUnavailableError(f"Refusing to load {what}: {exc}") from exc
    except Exception as exc:  # truncated / corrupt pickle
        raise DataUnavailableError(f"Could not unpickle {what}: {exc!r}") from exc
    if not isinstance(batch, dict):
        raise DataUnavailableError(f"{what}: expected a pickled dict, got {type(batch).__name__}.")
    data = _as_uint8(_dict_get(batch, "data", what), what)
    if data.size % 3072:
        raise DataUnavailableError(f"{what}: data has {data.size} values, not a multiple of 3072 (3x32x32).")
    # Row-major rows of 3072 bytes: the R, G and B planes of 32x32 each -> NCHW -> NHWC.
    x = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    y = _as_labels(_dict_get(batch, label_key, what), num_classes, x.shape[0], what)
    return x, y


def _load_local_cifar(path: str, info: DatasetInfo):
    train_members, test_member, label_key = _CIFAR_MEMBERS[info.name]
    raw = _read_tar_members(path, train_members + (test_member,))
    xs, ys = [], []
    for name in train_members:
        x, y = _decode_cifar_batch(raw.pop(name), label_key, info.num_classes, f"{path}:{name}")
        xs.append(x)
        ys.append(y)
    x_train = np.concatenate(xs) if len(xs) > 1 else xs[0]
    y_train = np.concatenate(ys) if len(ys) > 1 else ys[0]
    del xs, ys
    x_test, y_test = _decode_cifar_batch(raw.pop(test_member), label_key, info.num_classes, f"{path}:{test_member}")
    return x_train, y_train, x_test, y_test


def _load_tfds(info: DatasetInfo, data_dir: str | None):
    hint = _offline_hint(info)
    try:
        import tensorflow_datasets as tfds  # slow import: only when needed
    except ImportError as exc:
        raise DataUnavailableError(f"tensorflow-datasets is not installed ({exc}).", hint) from exc
    # Said before the load: without internet tfds gives up only after its retries, minutes later.
    logger.info("Loading %s with tensorflow-datasets: a first use downloads it, and without internet that fails "
                "only after several minutes of retries. %s", info.name, hint)
    try:
        splits = tfds.load(
            info.name,
            split=["train", "test"],
            batch_size=-1,
            as_supervised=True,
            data_dir=data_dir,
        )
        (x_train, y_train), (x_test, y_test) = tfds.as_numpy(splits)
    except ModuleNotFoundError as exc:  # a dependency tensorflow-datasets imports only when it downloads
        package = (exc.name or "").partition(".")[0]
        install = f": pip install {package} (or pip install -r requirements.txt)" if package else ""
        raise DataUnavailableError(
            f"tensorflow-datasets needs the module {exc.name or '(unnamed)'!r}, which is not installed{install} "
            f"({exc}).", hint
        ) from exc
    except Exception as exc:  # download/prepare failures come in many exception types
        raise DataUnavailableError(
            f"Could not download {info.name!r} with tensorflow-datasets (no internet?): {type(exc).__name__}: "
            f"{exc}.", hint
        ) from exc
    out = []
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        x = _as_uint8(x, f"tfds {info.name} {split}")
        if x.ndim == 3:
            x = x[..., None]
        out += [x, _as_labels(y, info.num_classes, x.shape[0], f"tfds {info.name} {split}")]
    return tuple(out)


def _synthetic(info: DatasetInfo, n_train: int, n_test: int, seed: int):
    """Learnable random data: class c's examples are template_c + N(0, 32^2) noise, clipped to uint8.

    A template is a random 4x4 (per channel) grid of values uniform in [0, 256),
    mirrored left-right and upsampled to the image size by repeating each cell
    (7x7 pixels for MNIST, 8x8 for CIFAR).  Being coarse and symmetric, the
    templates stay recognisable under the CIFAR augmentation (shift by up to 4
    pixels, horizontal flip), so the data is learnable with and without it.
    Labels cycle 0, 1, ..., C-1, 0, ...  Templates and each split's noise use
    separate seeded streams, so the split sizes do not change the templates.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError("synthetic_train and synthetic_test must be non-negative.")
    height, width, channels = info.input_shape
    half = np.random.default_rng([seed, 0]).uniform(0, 256, size=(info.num_classes, 4, 2, channels))
    coarse = np.concatenate([half, half[:, :, ::-1]], axis=2)  # (C, 4, 4, channels), symmetric
    templates = coarse.repeat(height // 4, axis=1).repeat(width // 4, axis=2)
    out = []
    for stream, n in ((1, n_train), (2, n_test)):
        rng = np.random.default_rng([seed, stream])
        y = np.arange(n, dtype=np.int64) % info.num_classes
        x = templates[y] + rng.normal(0.0, 32.0, size=(n,) + info.input_shape)
        out += [np.clip(np.rint(x), 0, 255).astype(np.uint8), y]
    return tuple(out)


def load_arrays(
    dataset: str,
    source: str = "tfds",
    data_dir: str | None = None,
    *,
    synthetic_train: int = SYNTHETIC_TRAIN,
    synthetic_test: int = SYNTHETIC_TEST,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw (x_train uint8 NHWC (MNIST: N,28,28,1), y_train int64, x_test, y_test).

    ``source`` is one of :data:`SOURCES`; ``data_dir`` is the tfds data
    directory (``None``: tfds default) or the directory of the local archives.
    ``synthetic_*`` and ``seed`` only concern the synthetic source.
    Raises :class:`DataUnavailableError` when the data cannot be obtained and
    ``ValueError`` for unknown dataset or source names.
    """
    info = _check_dataset(dataset)
    _check_source(source)
    data_dir = None if data_dir is None else os.path.expanduser(os.fspath(data_dir))  # '~/datasets' as configs say
    start = time.perf_counter()
    if source == "synthetic":
        arrays = _synthetic(info, int(synthetic_train), int(synthetic_test), int(seed))
    elif source == "local":
        path = _local_path(info, data_dir)
        arrays = _load_local_mnist(path, info) if dataset == "mnist" else _load_local_cifar(path, info)
    else:
        arrays = _load_tfds(info, data_dir)
    logger.info(
        "Loaded %s from %s: %d train / %d test examples in %.2f s",
        dataset, source, arrays[0].shape[0], arrays[2].shape[0], time.perf_counter() - start,
    )
    return arrays


# --------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------


def standardize_images(x: np.ndarray) -> np.ndarray:
    """Per-image standardisation, the formula of ``tf.image.per_image_standardization``.

    For each image (axis 0 indexes images; all other axes form the image)
    with N elements, mean ``m`` and population standard deviation ``s``::

        out = (x - m) / max(s, 1 / sqrt(N))

    so a constant image maps to zeros.  Computed in float64 in chunks of
    images (bounded memory), returned as float32 with the shape of ``x``.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"standardize_images expects a batch of images (ndim >= 2), got shape {x.shape}.")
    n_images = x.shape[0]
    n_elements = int(np.prod(x.shape[1:]))
    out = np.empty(x.shape, dtype=np.float32)
    if n_images == 0 or n_elements == 0:
        return out
    flat_in = x.reshape(n_images, n_elements)
    flat_out = out.reshape(n_images, n_elements)
    min_std = 1.0 / math.sqrt(n_elements)
    for start in range(0, n_images, _STANDARDIZE_CHUNK):
        chunk = flat_in[start : start + _STANDARDIZE_CHUNK].astype(np.float64)
        mean = chunk.mean(axis=1, keepdims=True)
        chunk -= mean
        std = np.sqrt(np.mean(np.square(chunk), axis=1, keepdims=True))
        chunk /= np.maximum(std, min_std)
        flat_out[start : start + _STANDARDIZE_CHUNK] = chunk
    return out


def example_seeds(seed: int, epoch, index):
    """The stateless seed pair of one training example in one epoch: fold_in(fold_in((seed, 0), epoch), index).
    A pure function of (seed, epoch, index), so a resumed run augments exactly as an uninterrupted one."""
    import tensorflow as tf

    epoch_seed = tf.random.experimental.stateless_fold_in(tf.constant([int(seed), 0], tf.int64), epoch)
    return tf.random.experimental.stateless_fold_in(epoch_seed, index)


def epoch_permutation(positions, n: int, seed: int, epoch):
    """The example index at each position of epoch `epoch`: a stateless pseudo-random permutation of 0..n-1,
    a pure function of (seed, epoch) (tf.random.experimental.index_shuffle), so any epoch's order can be produced
    without replaying the earlier ones."""
    import tensorflow as tf

    seed_pair = tf.stack([tf.constant(int(seed), tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.index_shuffle(positions, seed=seed_pair, max_index=n - 1)


def augment_image(image, seed):
    """Zero-pad 4 pixels on every side, random crop back to H x W, random horizontal flip.

    ``image`` is one (H, W, C) image; ``seed`` a shape-[2] int seed for the
    stateless random ops (so the augmentation is reproducible).
    """
    import tensorflow as tf

    shape = tf.shape(image)
    padded = tf.pad(image, [[_PAD, _PAD], [_PAD, _PAD], [0, 0]])
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
    cropped = tf.image.stateless_random_crop(padded, size=shape, seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(cropped, seed=flip_seed)


# --------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataBundle:
    """Train/test pipelines and their metadata.

    The training data is a stream of epochs: ``train_from(e)`` yields the
    batches of epoch e, e+1, ... without end (``train`` is ``train_from(0)``),
    so ``fit`` needs ``steps_per_epoch`` (and ``initial_epoch=e`` when
    resuming); ``epoch(e)`` is the finite dataset of epoch e alone. Epoch e's
    order and augmentation are pure functions of ``(seed, e)``: a run resumed
    at epoch e sees exactly the data an uninterrupted run sees. Batches are
    (x float32, y), ``y`` one-hot float32 if ``label_format == "one_hot"``
    else int32 class indices; the last, smaller batch of an epoch is kept, so
    ``steps_per_epoch = ceil(n_train / batch_size)``. ``test`` is batched in
    file order. The tf.data pipelines are prefetched; the numpy ones (off
    TensorFlow) build each batch on the main thread between steps.
    """

    stream: Callable[[int], Any]  # first epoch -> the endless dataset (or iterator) of batches
    test: Any  # tf.data.Dataset, or a keras.utils.PyDataset off the TensorFlow backend
    info: DatasetInfo
    n_train: int
    n_test: int
    steps_per_epoch: int
    label_format: str

    def train_from(self, epoch: int = 0):
        """The batches of epoch `epoch` (0-based), then of every later epoch, without end."""
        return self.stream(int(epoch))

    @property
    def train(self):
        """``train_from(0)``: pass ``steps_per_epoch`` to ``fit``."""
        return self.train_from(0)

    def epoch(self, epoch: int):
        """The ``steps_per_epoch`` batches of epoch `epoch` alone."""
        stream = self.train_from(epoch)
        if hasattr(stream, "take"):  # tf.data
            return stream.take(self.steps_per_epoch)
        return list(itertools.islice(stream, self.steps_per_epoch))

    @property
    def input_shape(self) -> tuple:
        """Shape of one model input as produced by the pipelines ((784,) for flattened MNIST)."""
        if hasattr(self.test, "element_spec"):  # tf.data
            return tuple(self.test.element_spec[0].shape[1:].as_list())
        return tuple(self.test.x.shape[1:])


def _encode_labels(y: np.ndarray, label_format: str, num_classes: int) -> np.ndarray:
    if label_format == "one_hot":
        return np.eye(num_classes, dtype=np.float32)[y]
    return y.astype(np.int32)


def _train_stream(x, y, batch_size, seed, augment, flat_shape, shuffle=True):
    """first epoch -> endless dataset of the batches of that epoch and every later one (see DataBundle)."""
    import tensorflow as tf

    n = x.shape[0]
    x_t = tf.convert_to_tensor(x)
    y_t = tf.convert_to_tensor(y)

    def order(positions, epoch):
        return epoch_permutation(positions, n, seed, epoch) if shuffle else positions

    def one_epoch(epoch):
        positions = tf.data.Dataset.range(n)
        if augment:
            def example(position):
                i = order(position, epoch)
                image = augment_image(tf.gather(x_t, i), example_seeds(seed, epoch, position))
                if flat_shape is not None:
                    image = tf.reshape(image, flat_shape)
                return image, tf.gather(y_t, i)

            return positions.map(example, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)

        def batch(position):
            i = order(position, epoch)
            return tf.gather(x_t, i), tf.gather(y_t, i)

        return positions.batch(batch_size).map(batch, num_parallel_calls=tf.data.AUTOTUNE)

    def stream(first_epoch: int):
        epochs = tf.data.Dataset.counter(int(first_epoch)).flat_map(one_epoch)
        endless = epochs.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
        return endless.prefetch(tf.data.AUTOTUNE)

    return stream


# Off the TensorFlow backend (Keras on JAX or PyTorch, e.g. on a GPU machine without TensorFlow) the pipelines are
# numpy: batches of the same kind, epoch order and augmentation pure functions of (seed, epoch) as above, drawn by
# numpy's generator instead of TensorFlow's stateless ops, so the two backends see different (equally random) orders.


def numpy_epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The example index at each position of epoch `epoch` off the TensorFlow backend: a permutation of 0..n-1
    drawn by numpy's generator seeded with (seed, epoch), a pure function of both."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def numpy_augment(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """augment_image for a batch in numpy: zero-pad 4 pixels on every side, crop H x W at `offsets` (row, column
    per image, each in [0, 8]), mirror left-right where `flips`."""
    n, height, width = images.shape[:3]
    padded = np.pad(images, [(0, 0), (_PAD, _PAD), (_PAD, _PAD), (0, 0)])
    out = np.empty_like(images)
    for k in range(n):
        row, col = offsets[k]
        crop = padded[k, row : row + height, col : col + width]
        out[k] = crop[:, ::-1] if flips[k] else crop
    return out


def _numpy_train_stream(x, y, batch_size, seed, augment, flat_shape, shuffle=True):
    """first epoch -> endless iterator of the batches of that epoch and every later one (see DataBundle)."""
    n = x.shape[0]

    def one_epoch(epoch):
        order = numpy_epoch_order(n, seed, epoch) if shuffle else np.arange(n)
        if augment:
            rng = np.random.default_rng([int(seed), int(epoch), 1])
            offsets = rng.integers(0, 2 * _PAD + 1, size=(n, 2))
            flips = rng.integers(0, 2, size=n).astype(bool)
        for start in range(0, n, batch_size):
            positions = np.arange(start, min(start + batch_size, n))
            idx = order[positions]
            images = x[idx]
            if augment:
                images = numpy_augment(images, offsets[positions], flips[positions])
                if flat_shape is not None:
                    images = images.reshape((len(idx),) + flat_shape)
            yield images, y[idx]

    def stream(first_epoch: int):  # a generator: what Keras' fit takes as an endless source
        for epoch in itertools.count(int(first_epoch)):
            yield from one_epoch(epoch)

    return stream


def _numpy_test_pipeline(x, y, batch_size):
    """The test set off TensorFlow: a keras.utils.PyDataset of `batch_size` batches in file order (the last one
    smaller), which Keras can evaluate every epoch."""
    import keras

    class TestBatches(keras.utils.PyDataset):
        """The test set in file order, in batches: re-iterable, as Keras evaluates it every epoch."""

        def __init__(self):
            super().__init__()
            self.x, self.y = x, y

        def __len__(self):
            return math.ceil(x.shape[0] / batch_size)

        def __getitem__(self, i):
            if not 0 <= i < len(self):
                raise IndexError(i)
            return x[i * batch_size : (i + 1) * batch_size], y[i * batch_size : (i + 1) * batch_size]

    return TestBatches()


def _test_pipeline(x, y, batch_size):
    import tensorflow as tf

    x_t = tf.convert_to_tensor(x)
    y_t = tf.convert_to_tensor(y)
    ds = tf.data.Dataset.range(x.shape[0]).batch(batch_size)
    ds = ds.map(lambda idx: (tf.gather(x_t, idx), tf.gather(y_t, idx)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def load_dataset(
    dataset: str,
    source: str = "tfds",
    data_dir: str | None = None,
    *,
    batch_size: int = 128,
    augment: bool | None = None,
    label_format: str | None = None,
    seed: int = 0,
    synthetic_train: int = SYNTHETIC_TRAIN,
    synthetic_test: int = SYNTHETIC_TEST,
    flatten: bool | None = None,
    shuffle: bool = True,
) -> DataBundle:
    """Load ``dataset`` from ``source`` and build the train/test pipelines.

    Defaults follow the paper's reference code: ``flatten=None`` flattens MNIST
    only; ``label_format=None`` is ``"one_hot"`` for MNIST/CIFAR-10 and
    ``"sparse"`` for CIFAR-100; ``augment=None`` augments CIFAR-100 only
    (``augment=True`` on MNIST raises ``ValueError``).  ``seed`` seeds the
    per-epoch shuffle, the augmentation and the synthetic data. ``shuffle=False``
    iterates the training set in file order every epoch, as the authors' MNIST
    pipeline did (``shuffle_files=True`` on a single-file split shuffles nothing).
    """
    info = _check_dataset(dataset)
    _check_source(source)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    batch_size = int(batch_size)
    if label_format is None:
        label_format = _DEFAULT_LABEL_FORMAT[dataset]
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"Unknown label_format {label_format!r}; allowed: {', '.join(LABEL_FORMATS)}.")
    if augment is None:
        augment = _DEFAULT_AUGMENT[dataset]
    if augment and dataset == "mnist":
        raise ValueError(
            "Augmentation (pad + random 32x32 crop + flip) is only defined for the CIFAR datasets, "
            f"not for dataset {dataset!r}; set augment to false."
        )
    if flatten is None:
        flatten = dataset == "mnist"

    x_train, y_train, x_test, y_test = load_arrays(
        dataset, source, data_dir, synthetic_train=synthetic_train, synthetic_test=synthetic_test, seed=seed
    )
    start = time.perf_counter()
    n_train, n_test = int(x_train.shape[0]), int(x_test.shape[0])
    x_train = standardize_images(x_train)
    x_test = standardize_images(x_test)
    flat_shape = (int(np.prod(info.input_shape)),) if flatten else None
    if flatten:
        x_test = x_test.reshape((n_test,) + flat_shape)
        if not augment:  # augmentation needs the image shape; it flattens per example
            x_train = x_train.reshape((n_train,) + flat_shape)
    y_train = _encode_labels(y_train, label_format, info.num_classes)
    y_test = _encode_labels(y_test, label_format, info.num_classes)

    train_stream, test_pipeline = ((_train_stream, _test_pipeline) if backends.on_tensorflow()
                                   else (_numpy_train_stream, _numpy_test_pipeline))
    stream = train_stream(x_train, y_train, batch_size, seed, bool(augment), flat_shape, shuffle=bool(shuffle))
    test = test_pipeline(x_test, y_test, batch_size)
    logger.info(
        "Prepared %s pipelines (batch %d, %s labels, augment=%s, flatten=%s) in %.2f s",
        dataset, batch_size, label_format, bool(augment), bool(flatten), time.perf_counter() - start,
    )
    return DataBundle(
        stream=stream,
        test=test,
        info=info,
        n_train=n_train,
        n_test=n_test,
        steps_per_epoch=math.ceil(n_train / batch_size),
        label_format=label_format,
    )
