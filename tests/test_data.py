"""prunelab.data on small files written here in the real on-disk formats (IDX, the CIFAR pickle
folder, an ImageFolder tree of PNGs), loaded through the real code paths."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import prunelab.data as data
from prunelab.data import folder as folder_module
from prunelab.data import roots

IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# ----------------------------------------------------------------------------- writers


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file, written from the format's definition (type 0x08 = unsigned byte)."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx_set(folder: Path, n_train: int, n_test: int, gz: bool, seed: int = 0) -> dict:
    """Four (Fashion-)MNIST files with random images and labels i % 10; returns what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for stem, array in zip(IDX_STEMS[split], (images, labels)):
            payload = idx_bytes(array)
            if gz:
                with gzip.open(folder / f"{stem}.gz", "wb") as f:
                    f.write(payload)
            else:
                (folder / stem).write_bytes(payload)
        written[split] = (images, labels)
    return written


def write_cifar(root: Path, kind: str, n_per_file: int, n_test: int, seed: int = 0) -> dict:
    """A tiny copy of torchvision's CIFAR python folder; returns arrays and md5 of each file."""
    rng = np.random.default_rng(seed)
    if kind == "cifar10":
        folder, train_files, test_file, meta_file = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "test_batch",
            "batches.meta",
        )
        label_key, meta = "labels", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}
        classes = 10
    else:
        folder, train_files, test_file, meta_file = "cifar-100-python", ["train"], "test", "meta"
        label_key, meta = "fine_labels", {"fine_label_names": [f"f{i}" for i in range(100)]}
        classes = 100
    base = root / folder
    base.mkdir(parents=True)
    md5 = {}

    def dump(name: str, obj: dict) -> None:
        blob = pickle.dumps(obj, protocol=2)
        (base / name).write_bytes(blob)
        md5[name] = hashlib.md5(blob).hexdigest()

    out = {"train": ([], []), "test": ([], [])}
    counter = 0
    for split, files, n in (("train", train_files, n_per_file), ("test", [test_file], n_test)):
        for name in files:
            images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
            labels = [(counter + j) % classes for j in range(n)]
            counter += n
            # rows of 3072 bytes: the red plane, then green, then blue, each row-major 32 x 32
            dump(name, {"batch_label": name, label_key: labels, "data": images.reshape(n, -1)})
            out[split][0].append(images)
            out[split][1].extend(labels)
    dump(meta_file, meta)
    arrays = {s: (np.concatenate(imgs), np.array(lbls)) for s, (imgs, lbls) in out.items()}
    return {
        "arrays": arrays,
        "md5": md5,
        "train_files": train_files,
        "test_file": test_file,
        "meta": meta_file,
    }


def load_cifar(root: Path, kind: str, written: dict, **kwargs) -> data.Dataset:
    """Load through torchvision's class, telling it the checksums of the files we wrote (its own
    integrity check then runs for real on them)."""
    cls = torchvision.datasets.CIFAR10 if kind == "cifar10" else torchvision.datasets.CIFAR100
    md5 = written["md5"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cls, "train_list", [[f, md5[f]] for f in written["train_files"]])
        mp.setattr(cls, "test_list", [[written["test_file"], md5[written["test_file"]]]])
        mp.setattr(cls, "meta", {**cls.meta, "md5": md5[written["meta"]]})
        return data.load(kind, data_root=root, **kwargs)


def write_image_tree(folder: Path, classes: list[str], per_class: int, seed: int, nested: bool) -> dict:
    """PNG files folder/<class>/[images/]<i>.png of 64 x 64 random RGB; returns path -> array."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for c in classes:
        d = folder / c / "images" if nested else folder / c
        d.mkdir(parents=True)
        for i in range(per_class):
            a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            path = d / f"{c}_{i}.png"
            Image.fromarray(a).save(path)
            arrays[str(path)] = a
    return arrays


# ----------------------------------------------------------------------------- fixtures

WNIDS = ["n003", "n001", "n002"]  # not sorted on purpose: labels follow sorted folder names


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10")
    written = write_cifar(root, "cifar10", n_per_file=8, n_test=12)
    return load_cifar(root, "cifar10", written), written["arrays"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    base = root / "tiny-imagenet-200"
    train = write_image_tree(base / "train", WNIDS, per_class=4, seed=1, nested=True)
    val = write_image_tree(base / "val", WNIDS, per_class=2, seed=2, nested=False)
    return root, train, val


def normalized(images_u8: np.ndarray, mean, std) -> torch.Tensor:
    """(x / 255 - mean) / std computed in float64, as an independent reference."""
    x = torch.from_numpy(images_u8.astype(np.float64)) / 255.0
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    return ((x - m) / s).float()


def collect(batches):
    return [(x.clone(), y.clone()) for x, y in batches]


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b)
    )


# ----------------------------------------------------------------------------- roots and names


def test_names_and_unknown_name():
    assert data.names() == ["mnist", "fashion_mnist", "cifar10", "cifar100", "tiny_imagenet", "imagenet"]
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar_10'; did you mean 'cifar10'\?"):
        data.load("cifar_10")


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert data.resolve_root(str(tmp_path / "arg")) == tmp_path / "arg"
    assert data.resolve_root() == tmp_path / "env"
    monkeypatch.delenv("PRUNELAB_DATA")
    assert data.resolve_root() == tmp_path / "xdg" / "prunelab" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.resolve_root() == tmp_path / "home" / ".cache" / "prunelab" / "data"


def test_load_uses_the_resolved_root(monkeypatch, tmp_path):
    write_idx_set(tmp_path / "env" / "MNIST" / "raw", 10, 10, gz=True)
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "env"))
    assert len(data.load("mnist").train) == 10
    with pytest.raises(FileNotFoundError):
        data.load("mnist", data_root=tmp_path / "elsewhere")  # the argument wins over the env


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mnist", ["MNIST/raw", "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "download=True"]),
        ("fashion_mnist", ["FashionMNIST/raw", "dataset-fashion-mnist", "download=True"]),
        ("cifar10", ["cifar-10-batches-py", "data_batch_1", "batches.meta", "download=True"]),
        ("cifar100", ["cifar-100-python", "meta", "download=True"]),
        ("tiny_imagenet", ["tiny-imagenet-200", "train/<wnid>", "val_annotations.txt"]),
        ("imagenet", ["imagenet", "train/<wnid>", "val/<wnid>", "image-net.org"]),
    ],
)
def test_missing_dataset_says_which_files_go_where(monkeypatch, tmp_path, name, expected):
    monkeypatch.setattr(roots, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    with pytest.raises(FileNotFoundError) as err:
        data.load(name, data_root=tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message
    for part in expected:
        assert part in message


# ----------------------------------------------------------------------------- IDX / MNIST family


def test_read_idx_plain_gz_and_corrupt(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(a))
    with gzip.open(tmp_path / "a.gz", "wb") as f:
        f.write(idx_bytes(a))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a"), a)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.gz"), a)
    # a big-endian int32 file (type 0x0C)
    b = np.array([1, -2, 70000], dtype=">i4")
    (tmp_path / "b").write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + b.tobytes())
    np.testing.assert_array_equal(data.read_idx(tmp_path / "b"), [1, -2, 70000])
    (tmp_path / "bad_magic").write_bytes(b"\x08\x00\x08\x01" + idx_bytes(a)[4:])
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(tmp_path / "bad_magic")
    (tmp_path / "short").write_bytes(idx_bytes(a)[:-1])
    with pytest.raises(ValueError, match="23 bytes"):
        data.read_idx(tmp_path / "short")
    (tmp_path / "not.gz").write_bytes(idx_bytes(a))
    with pytest.raises(ValueError, match="not.gz"):
        data.read_idx(tmp_path / "not.gz")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_torchvision_layout(tmp_path, gz):
    written = write_idx_set(tmp_path / "MNIST" / "raw", n_train=30, n_test=20, gz=gz)
    ds = data.load("mnist", data_root=tmp_path)
    # plain files are read by torchvision's MNIST class; gzipped ones (which it refuses) by ours
    assert ds.source.startswith("IDX files" if gz else "torchvision MNIST")
    assert (ds.name, ds.num_classes, ds.input_shape) == ("mnist", 10, (1, 28, 28))
    assert (len(ds.train), len(ds.test)) == (30, 20)
    for split, part in (("train", ds.train), ("test", ds.test)):
        images, labels = written[split]
        assert part.images.dtype == torch.uint8 and part.images.shape == (len(labels), 1, 28, 28)
        assert torch.equal(part.images[:, 0], torch.from_numpy(images))
        assert part.labels.dtype == torch.int64 and part.labels.tolist() == labels.tolist()
    assert ds.augment is None  # the LeNet recipe uses no augmentation


def test_fashion_mnist_from_debian_flat_folder(monkeypatch, tmp_path):
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    written = write_idx_set(debian, n_train=40, n_test=10, gz=True, seed=5)
    monkeypatch.setattr(roots, "DEBIAN_FASHION_MNIST", debian)
    ds = data.load("fashion_mnist", data_root=tmp_path / "empty-root")
    assert ds.source == f"IDX files in {debian}"
    assert torch.equal(ds.train.images[:, 0], torch.from_numpy(written["train"][0]))
    assert ds.test.labels.tolist() == written["test"][1].tolist()
    assert ds.classes[0] == "T-shirt/top"
    # normalization: mean and std of the training pixels, computed independently here
    pixels = written["train"][0].astype(np.float64) / 255
    assert ds.mean[0] == pytest.approx(pixels.mean(), abs=1e-12)
    assert ds.std[0] == pytest.approx(pixels.std(), abs=1e-12)
    x = torch.cat([x for x, _ in ds.loader("train", 16).epoch(0)])
    assert abs(x.double().mean().item()) < 1e-6 and x.double().std(unbiased=False).item() == pytest.approx(
        1, abs=1e-6
    )
    # a copy in torchvision's folder is preferred to the Debian one
    write_idx_set(tmp_path / "root" / "FashionMNIST" / "raw", n_train=20, n_test=10, gz=False)
    assert len(data.load("fashion_mnist", data_root=tmp_path / "root").train) == 20


def test_real_debian_fashion_mnist():
    folder = Path("/usr/share/datasets/fashion-mnist")
    if not all((folder / f"{s}.gz").is_file() for pair in IDX_STEMS.values() for s in pair):
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    ds = data.load("fashion_mnist", data_root="/nonexistent/prunelab-test-root")
    assert (len(ds.train), len(ds.test), ds.input_shape, ds.num_classes) == (60000, 10000, (1, 28, 28), 10)
    assert torch.bincount(ds.train.labels).tolist() == [6000] * 10
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10
    # the published Fashion-MNIST constants
    assert ds.mean[0] == pytest.approx(0.2860, abs=1e-4) and ds.std[0] == pytest.approx(0.3530, abs=1e-4)


# ----------------------------------------------------------------------------- CIFAR


def test_cifar10_pickle_folder(cifar10):
    ds, arrays = cifar10
    assert (ds.name, ds.num_classes, ds.input_shape) == ("cifar10", 10, (3, 32, 32))
    assert ds.source.startswith("torchvision CIFAR10")
    assert (len(ds.train), len(ds.test)) == (40, 12)
    assert ds.classes == [f"c{i}" for i in range(10)]
    for split, part in (("train", ds.train), ("test", ds.test)):
        images, labels = arrays[split]
        assert part.images.dtype == torch.uint8 and torch.equal(part.images, torch.from_numpy(images))
        assert part.labels.tolist() == labels.tolist()
    pixels = arrays["train"][0].astype(np.float64) / 255
    np.testing.assert_allclose(ds.mean, pixels.mean(axis=(0, 2, 3)), atol=1e-12)
    np.testing.assert_allclose(ds.std, pixels.std(axis=(0, 2, 3)), atol=1e-12)
    assert ds.augment == "shift"


def test_cifar100_pickle_folder(tmp_path):
    written = write_cifar(tmp_path, "cifar100", n_per_file=200, n_test=100)
    ds = load_cifar(tmp_path, "cifar100", written)
    assert (ds.num_classes, len(ds.train), len(ds.test)) == (100, 200, 100)
    assert torch.equal(ds.train.images, torch.from_numpy(written["arrays"]["train"][0]))
    assert ds.train.labels.tolist() == written["arrays"]["train"][1].tolist()


def test_cifar_corrupt_files_are_not_reported_missing(tmp_path):
    written = write_cifar(tmp_path, "cifar10", n_per_file=2, n_test=2)
    # the real md5 sums of CIFAR-10 do not match our tiny files
    with pytest.raises(ValueError, match="md5"):
        data.load("cifar10", data_root=tmp_path)
    assert written["md5"]


def test_test_loader_is_ordered_unaugmented_and_normalized(cifar10):
    ds, arrays = cifar10
    loader = ds.loader("test", batch_size=5)
    assert len(loader) == 3 and len(ds.loader("test", 5, drop_last=True)) == 2
    xs, ys = zip(*loader.epoch(0))
    assert [len(y) for y in ys] == [5, 5, 2]
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x, normalized(arrays["test"][0], ds.mean, ds.std), rtol=0, atol=1e-5)
    assert y.tolist() == arrays["test"][1].tolist()


def reference_flip_shift(image: np.ndarray, flip: bool, dy: int, dx: int) -> np.ndarray:
    """Per-sample reference: mirror, paste into a zero canvas padded by 4, cut out the shifted window."""
    c, h, w = image.shape
    src = image[:, :, ::-1] if flip else image
    canvas = np.zeros((c, h + 8, w + 8), dtype=image.dtype)
    canvas[:, 4 : 4 + h, 4 : 4 + w] = src
    return canvas[:, 4 - dy : 4 - dy + h, 4 - dx : 4 - dx + w]


def find_transform(out: np.ndarray, original: np.ndarray):
    """All (flip, dy, dx) with |dy|, |dx| <= 4 whose reference equals ``out``."""
    return [
        (flip, dy, dx)
        for flip in (False, True)
        for dy in range(-4, 5)
        for dx in range(-4, 5)
        if np.array_equal(reference_flip_shift(original, flip, dy, dx), out)
    ]


def test_flip_and_shift_matches_a_per_sample_reference():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 12, 10), dtype=torch.uint8, generator=g)
    out = data.flip_and_shift(images, torch.Generator().manual_seed(1))
    seen = set()
    for i in range(len(images)):
        found = find_transform(out[i].numpy(), images[i].numpy())
        assert len(found) == 1, i
        seen.add(found[0])
    assert {f for f, _, _ in seen} == {False, True}
    assert len({(dy, dx) for _, dy, dx in seen}) > 20  # many different shifts, edges included
    assert max(max(abs(dy), abs(dx)) for _, dy, dx in seen) == 4


def test_augmented_train_batches_are_flipped_shifted_originals(cifar10):
    ds, arrays = cifar10
    loader = ds.loader("train", batch_size=16, seed=7)
    assert loader.augment == "shift"
    images = arrays["train"][0]
    order = loader.order(1)
    seen = []
    for b, (x, y) in enumerate(loader.epoch(1)):
        idx = order[b * 16 : (b + 1) * 16].numpy()
        assert y.tolist() == arrays["train"][1][idx].tolist()
        # back to pixel values: normalization is affine per channel and exactly invertible to 1e-3
        m = torch.tensor(ds.mean).view(1, -1, 1, 1)
        s = torch.tensor(ds.std).view(1, -1, 1, 1)
        pixels = ((x * s + m) * 255).round().to(torch.uint8).numpy()
        for out, i in zip(pixels, idx):
            found = find_transform(out, images[i])
            assert found, (b, i)
            seen.extend(found)
    assert {f for f, _, _ in seen} == {False, True}


def test_epoch_resume_is_bitwise_the_tail_and_touches_no_global_rng(cifar10):
    ds, _ = cifar10
    loader = ds.loader("train", batch_size=6, seed=3)
    assert len(loader) == 7
    rng_state = torch.get_rng_state()
    full = collect(loader.epoch(4))
    for k in (0, 1, 5, 6, 7):
        assert same_batches(collect(loader.epoch(4, start_batch=k)), full[k:])
    assert torch.equal(torch.get_rng_state(), rng_state)
    # a fresh loader (a restarted process) with the same seed gives the same bits
    assert same_batches(collect(ds.loader("train", 6, seed=3).epoch(4, start_batch=2)), full[2:])
    # other epochs and seeds differ; iterating the loader walks epochs 0, 1, ...
    assert not same_batches(collect(loader.epoch(5)), full)
    assert not same_batches(collect(ds.loader("train", 6, seed=4).epoch(4)), full)
    fresh = ds.loader("train", batch_size=6, seed=3)
    assert same_batches(collect(fresh), collect(loader.epoch(0)))
    assert same_batches(collect(fresh), collect(loader.epoch(1)))
    with pytest.raises(ValueError, match="past the end"):
        loader.epoch(0, start_batch=8)


def test_loader_options(cifar10):
    ds, arrays = cifar10
    plain = ds.loader("train", 8, shuffle=False, augment=False)
    x = torch.cat([x for x, _ in plain.epoch(0)])
    torch.testing.assert_close(x, normalized(arrays["train"][0], ds.mean, ds.std), rtol=0, atol=1e-5)
    assert ds.loader("test", 8).augment is None and ds.loader("test", 8, augment=True).augment == "shift"
    assert ds.loader("train", 8).shuffle and not ds.loader("test", 8).shuffle
    with pytest.raises(ValueError, match="'crop' is not available for cifar10"):
        ds.loader("train", 8, augment="crop")
    with pytest.raises(ValueError, match="split"):
        ds.loader("val", 8)
    with pytest.raises(ValueError, match="batch_size"):
        ds.loader("train", 0)


# ----------------------------------------------------------------------------- balanced batches


def test_balanced_batch(cifar10):
    ds, arrays = cifar10
    x, y = ds.balanced_batch(per_class=4, seed=0)
    assert x.shape == (40, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(y, minlength=10).tolist() == [4] * 10
    assert len(set(y[:10].tolist())) > 1  # shuffled, not grouped by class
    # never augmented: every example is a normalized training image of the stated class
    reference = normalized(arrays["train"][0], ds.mean, ds.std)
    for xi, yi in zip(x, y):
        match = [i for i in range(len(reference)) if torch.allclose(reference[i], xi, atol=1e-5)]
        assert len(match) == 1 and arrays["train"][1][match[0]] == yi
    x2, y2 = ds.balanced_batch(per_class=4, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(ds.balanced_batch(per_class=4, seed=1)[0], x)
    assert torch.bincount(ds.balanced_batch(per_class=1, split="test")[1]).tolist() == [1] * 10
    with pytest.raises(ValueError, match="only 4 examples of class 0 .*per_class=5"):
        ds.balanced_batch(per_class=5)


# ----------------------------------------------------------------------------- image folders


def test_tiny_imagenet_image_folder(tiny):
    root, train_arrays, val_arrays = tiny
    ds = data.load("tiny_imagenet", data_root=root)
    assert (ds.num_classes, ds.input_shape, ds.augment) == (3, (3, 64, 64), "crop")
    assert ds.classes == sorted(WNIDS) and (len(ds.train), len(ds.test)) == (12, 6)
    # the evaluation loader: resize 64 + center crop 64 leaves 64 px images as they are
    loader = ds.loader("test", batch_size=4)
    assert len(loader) == 2
    xs, ys = zip(*loader.epoch(0))
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    expected = np.stack([val_arrays[p].transpose(2, 0, 1) for p, _ in ds.test.samples])
    torch.testing.assert_close(
        x, normalized(expected, data.IMAGENET_MEAN, data.IMAGENET_STD), rtol=0, atol=1e-5
    )
    assert y.tolist() == [sorted(WNIDS).index(Path(p).parent.name) for p, _ in ds.test.samples]
    xb, yb = ds.balanced_batch(per_class=2, seed=0)
    assert xb.shape == (6, 3, 64, 64) and torch.bincount(yb).tolist() == [2, 2, 2]


def test_tiny_imagenet_official_flat_val_layout(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    write_image_tree(base / "train", WNIDS, per_class=1, seed=0, nested=True)
    (base / "val" / "images").mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(["n002", "n003", "n002"]):
        Image.fromarray(np.full((64, 64, 3), i, dtype=np.uint8)).save(
            base / "val" / "images" / f"val_{i}.JPEG"
        )
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    ds = data.load("tiny_imagenet", data_root=tmp_path)
    assert ds.test.targets.tolist() == [1, 2, 1]  # n001 -> 0, n002 -> 1, n003 -> 2


def test_image_folder_loader_resumes_without_loading_skipped_images(tiny, monkeypatch):
    root, _, _ = tiny
    ds = data.load("tiny_imagenet", data_root=root)
    loader = ds.loader("train", batch_size=4, seed=2)
    assert len(loader) == 3
    full = collect(loader.epoch(1))
    assert full[0][0].shape == (4, 3, 64, 64)
    opened = []
    real_load = folder_module.load_image
    monkeypatch.setattr(folder_module, "load_image", lambda p: opened.append(p) or real_load(p))
    tail = collect(loader.epoch(1, start_batch=2))
    assert same_batches(tail, full[2:]) and len(opened) == 4
    # random crops are seeded per example: the same with worker processes, different per epoch
    workers = ds.loader("train", batch_size=4, seed=2, num_workers=2)
    assert same_batches(collect(workers.epoch(1)), full)
    assert not same_batches(collect(loader.epoch(2)), full)
    assert not torch.equal(full[0][0], collect(ds.loader("train", 4, seed=2, augment=False).epoch(1))[0][0])


def test_modified_tiny_imagenet_shift(tiny):
    root, train_arrays, _ = tiny
    ds = data.load("tiny_imagenet", data_root=root, augment="shift")
    loader = ds.loader("train", batch_size=6, seed=0)
    assert ds.augment == "shift" and loader.augment == "shift"
    order = loader.order(0)
    m = torch.tensor(data.IMAGENET_MEAN).view(1, -1, 1, 1)
    s = torch.tensor(data.IMAGENET_STD).view(1, -1, 1, 1)
    for b, (x, _) in enumerate(loader.epoch(0)):
        pixels = ((x * s + m) * 255).round().to(torch.uint8).numpy()
        for out, i in zip(pixels, order[b * 6 : (b + 1) * 6].tolist()):
            original = train_arrays[ds.train.samples[i][0]].transpose(2, 0, 1)
            assert find_transform(out, original)
    assert same_batches(collect(loader.epoch(0, start_batch=1)), collect(loader.epoch(0))[1:])


def test_shards_partition_every_global_batch(cifar10):
    """Distributed ranks each get a contiguous part of the same augmented global batch."""
    ds, _ = cifar10
    full = collect(ds.loader("train", 7, seed=3).epoch(1))
    parts = [collect(ds.loader("train", 7, seed=3, shard=(r, 3)).epoch(1)) for r in range(3)]
    for b, (x, y) in enumerate(full):
        xs = torch.cat([p[b][0] for p in parts])
        ys = torch.cat([p[b][1] for p in parts])
        assert torch.equal(xs, x) and torch.equal(ys, y)
    with pytest.raises(ValueError, match="shard"):
        ds.loader("train", 7, shard=(3, 3))


def expected_shift_batches(images: np.ndarray, labels: np.ndarray, batch: int, seed: int, epoch: int,
                           shard=(0, 1)):
    """The augmented batches as documented, recomputed one image at a time: the order a permutation from
    the generator of (seed, epoch); batch b's flips, then row shifts, then column shifts drawn from the
    generator of (seed, epoch, b) for the whole global batch; each rank keeps its contiguous part."""
    from prunelab.data.transforms import AUGMENT, ORDER, generator

    n = len(labels)
    order = torch.randperm(n, generator=generator(ORDER, seed, epoch)).numpy()
    rank, world = shard
    out = []
    for b in range(-(-n // batch)):
        idx = order[b * batch : (b + 1) * batch]
        g = generator(AUGMENT, seed, epoch, b)
        flip = torch.randint(0, 2, (len(idx),), generator=g).tolist()
        dy = torch.randint(-4, 5, (len(idx),), generator=g).tolist()
        dx = torch.randint(-4, 5, (len(idx),), generator=g).tolist()
        mine = np.array_split(np.arange(len(idx)), world)[rank]
        x = np.stack([reference_flip_shift(images[idx[i]], bool(flip[i]), dy[i], dx[i]) for i in mine])
        out.append((x, labels[idx[mine]]))
    return out


@pytest.mark.parametrize("shard", [(0, 1), (1, 3)])
def test_augmentation_draws_equal_an_independent_recomputation(cifar10, shard):
    """The per-epoch draws reach each batch unchanged: the same bits as drawing batch by batch, on any
    device and for any number of ranks (resumed mid-epoch too)."""
    ds, arrays = cifar10
    images, labels = arrays["train"]
    want = expected_shift_batches(images, np.asarray(labels), 7, seed=3, epoch=2, shard=shard)
    loader = ds.loader("train", 7, seed=3, shard=shard)
    for start in (0, 2):
        got = collect(loader.epoch(2, start_batch=start))
        assert len(got) == len(want) - start
        for (x, y), (wx, wy) in zip(got, want[start:]):
            assert y.tolist() == wy.tolist()
            torch.testing.assert_close(x, normalized(wx, ds.mean, ds.std), rtol=0, atol=1e-5)


def test_training_on_an_image_folder_is_the_same_with_loader_workers(tiny):
    """The batches of every step are a function of (data seed, epoch, batch) alone: training with two
    worker processes decoding the images gives the same bits as training without any."""
    from torch import nn

    from prunelab.training import TrainSettings, train
    from prunelab.training.runtime import RuntimeOptions

    root, _, _ = tiny
    ds = data.load("tiny_imagenet", data_root=root)
    states = []
    for workers in (0, 2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 2, 5, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 15 * 15, 3))
        train(model, ds, TrainSettings(train="2ep", batch_size=5, lr=0.1), device="cpu",
              runtime=RuntimeOptions(loader_workers=workers))
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
