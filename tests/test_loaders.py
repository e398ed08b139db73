import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from fedtrain.config import load_config
from fedtrain.data import build_federated_data, load_dataset, load_digits
from fedtrain.errors import DataError


def _write_idx(path, array, code):
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(">u1").tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_digits_is_embedded_and_shaped_as_images():
    ds = load_digits()
    assert ds.x.shape == (1797, 1, 8, 8) and ds.num_classes == 10 and ds.x.max() == 16


def test_npz_round_trip(tmp_path):
    x = np.random.default_rng(0).random((20, 5)).astype(np.float32)
    y = np.array(["a", "b"] * 10)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.x.shape == (20, 5) and ds.classes == ("a", "b") and np.array_equal(ds.y, [0, 1] * 10)


@pytest.mark.parametrize("with_classes", [True, False])
def test_npz_keeps_its_declared_value_range(tmp_path, with_classes):
    # max_value is what normalize=range and dp-standard scale by; it must not depend on a 'classes' array
    arrays = {"x": np.zeros((4, 3), np.float32), "y": np.array([0, 1, 0, 1]), "max_value": np.float32(16.0)}
    if with_classes:
        arrays["classes"] = np.array(["a", "b"])
    np.savez(tmp_path / "d.npz", **arrays)
    assert load_dataset(tmp_path / "d.npz").max_value == 16.0


def test_csv_with_label_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("f1,label,f2\n1,cat,2\n3,dog,4\n5,cat,6\n")
    ds = load_dataset(path)
    assert ds.x.tolist() == [[1, 2], [3, 4], [5, 6]] and ds.y.tolist() == [0, 1, 0]


def test_idx_folder_mnist_layout(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (12, 4, 4))
    labels = np.arange(12) % 3
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, 0x08)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, 0x08)
    ds = load_dataset(tmp_path)
    assert ds.x.shape == (12, 1, 4, 4) and np.array_equal(ds.x[:, 0], images) and ds.y.tolist() == labels.tolist()


def test_image_folder(tmp_path):
    for cls in ("circle", "square"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((6, 6), i * 40, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset(tmp_path)
    assert ds.x.shape == (6, 1, 6, 6) and ds.classes == ("circle", "square")


def _text(name, text):
    def make(p):
        (p / name).write_text(text)
        return p / name

    return make


def _npz(**arrays):
    def make(p):
        np.savez(p / "x.npz", **arrays)
        return p / "x.npz"

    return make


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.npz", "does not exist"),
        (_text("x.npz", "garbage"), "not a readable .npz"),
        (_npz(a=np.ones(3)), "needs arrays named 'x' and 'y'"),
        (_npz(x=np.ones((3, 2)), y=np.ones(4)), "'x' has 3 samples but 'y' has 4"),
        (_text("x.csv", "a,b\n1,2\n"), "no label column 'label'"),
        (_text("x.csv", "a,label\n1,2\n3\n"), "line 3 has 1 fields"),
        (_text("x.csv", "a,label\nfoo,2\n"), "feature columns must be numeric"),
        (_text("x.txt", "hi"), "cannot tell the format"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_dataset(make(tmp_path))


def test_truncated_idx_file(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 2, 2)), 0x08)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4), 0x08)
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-3])
    with pytest.raises(DataError, match="IDX header says shape"):
        load_dataset(tmp_path)


def test_federated_data_splits_are_disjoint_and_complete():
    cfg = load_config()
    fd = build_federated_data(cfg.data, cfg.partition, 0)
    n_clients = sum(len(c.train.y) + (len(c.eval.y) if c.eval else 0) for c in fd.clients)
    assert n_clients + len(fd.test.y) + len(fd.val.y) == 1797
    assert len(fd.test.y) == 360
    # Normalisation is fitted on training data only and stored for devices.
    assert fd.normalizer.method == "standard" and len(fd.normalizer.state_dict()["shift"]) == 1


def test_label_noise_and_class_keep_touch_training_data_only():
    base = load_config()
    noisy = load_config(overrides="label-noise=0.5 class-keep='0:0.2'")
    a = build_federated_data(base.data, base.partition, 0)
    b = build_federated_data(noisy.data, noisy.partition, 0)
    assert np.array_equal(a.test.y, b.test.y) and np.array_equal(a.val.y, b.val.y)
    counts_a, counts_b = a.label_counts().sum(0), b.label_counts().sum(0)
    assert counts_b.sum() < counts_a.sum()
    # Half the labels flipped: class 0 (mostly dropped) gets flipped-in samples from other classes.
    assert counts_b[0] > 0.2 * counts_a[0] * 0.5
