"""Bad data files: npz, CSV, IDX and image folders that are missing, empty, truncated, mis-shaped, non-finite,
single-class or mislabelled, read by ``fedtrain split`` (the loader every run uses; nothing trains)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import TINY, Case, Ctx, check, params, run_cli

from fedtrain.data.loaders import load_dataset

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 6)).astype(np.float32)
Y = np.arange(40) % 2


def _split(make):
    """``fedtrain split`` of the file ``make(folder)`` writes."""

    def argv(ctx: Ctx) -> list[str]:
        return ["split", str(ctx.tmp / "nodes"), "--data-path", str(make(ctx.tmp))]

    return argv


def _npz(**arrays):
    def make(tmp: Path) -> Path:
        np.savez(tmp / "d.npz", **arrays)
        return tmp / "d.npz"

    return make


def _bytes(name: str, data: bytes):
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(data)
        return tmp / name

    return make


def _npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=X, y=Y)
    return buf.getvalue()


def _csv(text: str):
    return _bytes("d.csv", text.encode())


def _table(x=X, y=Y, header="a,b,c,d,e,f,label") -> str:
    return header + "\n" + "".join(",".join(map(str, row)) + f",{lab}\n" for row, lab in zip(x, y, strict=True))


def _idx(array: np.ndarray, code: int = 0x08) -> bytes:
    head = bytes([0, 0, code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return head + array.astype({0x08: ">u1", 0x0D: ">f4"}[code]).tobytes()


def _idx_folder(images: bytes, labels: bytes | None):
    def make(tmp: Path) -> Path:
        root = tmp / "idx"
        root.mkdir()
        (root / "train-images-idx3-ubyte").write_bytes(images)
        if labels is not None:
            (root / "train-labels-idx1-ubyte").write_bytes(labels)
        return root

    return make


IMAGES = RNG.integers(0, 255, size=(20, 8, 8))
LABELS = np.arange(20) % 2


def _images(sizes: dict[str, list[tuple[int, int]]], corrupt: str = ""):
    def make(tmp: Path) -> Path:
        from PIL import Image

        root = tmp / "images"
        for cls, shapes in sizes.items():
            (root / cls).mkdir(parents=True)
            for i, (w, h) in enumerate(shapes):
                Image.fromarray(np.full((h, w), 40 * i % 255, dtype=np.uint8)).save(root / cls / f"{i}.png")
        if corrupt:
            (root / corrupt / "broken.png").write_bytes(b"\x89PNG not really")
        return root

    return make


def _missing(tmp: Path) -> Path:
    return tmp / "nope.npz"


X_NAN = X.copy()
X_NAN[[3, 3, 7], [0, 1, 2]] = np.nan
X_INF = X.copy()
X_INF[5, 5] = np.inf
OK_IMG = [(8, 8)] * 3
D = "data"
CASES = [
    Case(
        "missing",
        D,
        "a data-path that does not exist",
        _split(_missing),
        r"data-path '.*nope\.npz' does not exist; point data-path at a \.npz, \.csv, IDX folder or image folder",
    ),
    Case(
        "suffix",
        D,
        "a file of unknown type",
        _split(_bytes("d.txt", b"1,2\n")),
        r"d\.txt: cannot tell the format from suffix '\.txt'; set data-format",
    ),
    Case("npz-empty", D, "an empty .npz file", _split(_bytes("d.npz", b"")), r"d\.npz: not a readable \.npz file"),
    Case(
        "npz-truncated",
        D,
        "a truncated .npz",
        _split(_bytes("d.npz", _npz_bytes()[:300])),
        r"d\.npz: not a readable \.npz file",
    ),
    Case(
        "npz-not-zip",
        D,
        "a text file named .npz",
        _split(_bytes("d.npz", b"x,y\n1,2\n")),
        r"d\.npz: not a readable \.npz file",
    ),
    Case(
        "npz-no-y",
        D,
        "an .npz without labels",
        _split(_npz(x=X)),
        r"d\.npz: a \.npz needs arrays named 'x' and 'y'; it has \['x'\]",
    ),
    Case(
        "npz-nan",
        D,
        "NaN inputs in an .npz",
        _split(_npz(x=X_NAN, y=Y)),
        r"d\.npz: 3 input values are NaN or infinite \(in 2 of 40 samples.*remove or impute them",
    ),
    Case(
        "npz-inf",
        D,
        "an infinite input in an .npz",
        _split(_npz(x=X_INF, y=Y)),
        r"d\.npz: 1 input values are NaN or infinite \(in 1 of 40 samples",
    ),
    Case(
        "npz-overflow",
        D,
        "float64 inputs beyond float32's range",
        _split(_npz(x=X.astype(np.float64) * 1e300, y=Y)),
        r"d\.npz: \d+ input values are NaN or infinite.*beyond float32's range",
    ),
    Case(
        "npz-nan-labels",
        D,
        "NaN labels",
        _split(_npz(x=X, y=np.where(Y == 1, np.nan, 0.0))),
        r"d\.npz: 'y' holds 20 NaN or infinite labels",
    ),
    Case(
        "npz-length",
        D,
        "fewer labels than samples",
        _split(_npz(x=X, y=Y[:30])),
        r"d\.npz: 'x' has 40 samples but 'y' has 30",
    ),
    Case(
        "npz-1d",
        D,
        "1-D inputs",
        _split(_npz(x=X[:, 0], y=Y)),
        r"d\.npz: inputs must have shape \(samples, features\.\.\.\) in 'x', labels \(samples,\) in 'y'; "
        r"got \(40,\) and \(40,\)",
    ),
    Case(
        "npz-2d-labels",
        D,
        "two labels per sample",
        _split(_npz(x=X, y=np.stack([Y, Y], 1))),
        r"d\.npz: 'y' must hold one label per sample, shape \(40,\); got shape \(40, 2\)",
    ),
    Case(
        "npz-scalar-labels",
        D,
        "a scalar as labels",
        _split(_npz(x=X, y=np.int64(3))),
        r"d\.npz: inputs must have shape .* got \(40, 6\) and \(\)",
    ),
    Case(
        "npz-strings",
        D,
        "text inputs",
        _split(_npz(x=np.array([["a"]] * 40), y=Y)),
        r"d\.npz: 'x' must be real numbers, got dtype <U1",
    ),
    Case(
        "npz-complex",
        D,
        "complex inputs",
        _split(_npz(x=X.astype(np.complex64), y=Y)),
        r"d\.npz: 'x' must be real numbers, got dtype complex64",
    ),
    Case(
        "npz-no-samples",
        D,
        "zero samples",
        _split(_npz(x=X[:0], y=Y[:0])),
        r"d\.npz: the data set is empty \(no samples\)",
    ),
    Case(
        "npz-one-class",
        D,
        "a single class",
        _split(_npz(x=X, y=np.zeros(40, dtype=int))),
        r"d\.npz: found 1 class; classification needs at least 2",
    ),
    Case(
        "npz-classes-range",
        D,
        "labels outside the 'classes' array",
        _split(_npz(x=X, y=Y + 5, classes=np.array(["a", "b"]))),
        r"d\.npz: with a 'classes' array, 'y' must hold integers in 0\.\.1",
    ),
    Case(
        "npz-pickle",
        D,
        "an object array (needs pickle)",
        _split(_npz(x=np.array([{}] * 40, dtype=object), y=Y)),
        r"d\.npz: not a readable \.npz file \(Object arrays cannot be loaded when allow_pickle=False\)",
    ),
    Case(
        "csv-empty", D, "an empty CSV", _split(_csv("")), r"d\.csv: a CSV needs a header row and at least one data row"
    ),
    Case(
        "csv-header-only",
        D,
        "a CSV with only a header",
        _split(_csv("a,b,label\n")),
        r"d\.csv: a CSV needs a header row and at least one data row",
    ),
    Case(
        "csv-no-label",
        D,
        "a CSV without the label column",
        _split(_csv(_table(header="a,b,c,d,e,f,target"))),
        r"d\.csv: no label column 'label'; columns are \[.*'target'\]; set label-column",
    ),
    Case(
        "csv-ragged",
        D,
        "a CSV line with a missing field",
        _split(_csv(_table() + "1,2,3\n")),
        r"d\.csv: line 42 has 3 fields, the header has 7",
    ),
    Case(
        "csv-text",
        D,
        "a word in a feature column",
        _split(_csv("a,label\n1,0\nabc,1\n")),
        r"d\.csv: feature columns must be numeric \(could not convert string to float: 'abc'\)",
    ),
    Case(
        "csv-nan",
        D,
        "a nan cell",
        _split(_csv(_table().replace(str(X[2, 1]), "nan", 1))),
        r"d\.csv: 1 input values are NaN or infinite \(in 1 of 40 samples",
    ),
    Case(
        "csv-inf",
        D,
        "inf cells",
        _split(_csv(_table().replace(str(X[2, 1]), "inf", 1).replace(str(X[9, 0]), "-inf", 1))),
        r"d\.csv: 2 input values are NaN or infinite \(in 2 of 40 samples",
    ),
    Case(
        "csv-only-labels",
        D,
        "a CSV of labels only",
        _split(_csv("label\n0\n1\n")),
        r"d\.csv: the CSV has only the label column 'label'; it needs feature columns too",
    ),
    Case(
        "csv-one-class",
        D,
        "a CSV of one class",
        _split(_csv(_table(y=np.zeros(40, dtype=int)))),
        r"d\.csv: found 1 class; classification needs at least 2",
    ),
    Case(
        "csv-binary",
        D,
        "a binary file named .csv",
        _split(_bytes("d.csv", b"\xff\xfe\x00\x81")),
        r"d\.csv: cannot read CSV \('utf-8' codec can't decode",
    ),
    Case(
        "idx-no-labels",
        D,
        "an IDX folder without a labels file",
        _split(_idx_folder(_idx(IMAGES), None)),
        r"an IDX folder needs matching '\*-images-idx3-ubyte' and '\*-labels-idx1-ubyte' files; "
        r"found \['train-images-idx3-ubyte'\]",
    ),
    Case(
        "idx-magic",
        D,
        "an IDX file with a bad magic number",
        _split(_idx_folder(b"PK\x03\x04" + bytes(60), _idx(LABELS))),
        r"train-images-idx3-ubyte: not an IDX file \(bad magic number 504b0304\)",
    ),
    Case(
        "idx-truncated",
        D,
        "a truncated IDX file",
        _split(_idx_folder(_idx(IMAGES)[:-100], _idx(LABELS))),
        r"train-images-idx3-ubyte: IDX header says shape \(20, 8, 8\) \(1280 bytes\) but the file holds 1180",
    ),
    Case(
        "idx-header",
        D,
        "an IDX file cut inside its header",
        _split(_idx_folder(_idx(IMAGES)[:6], _idx(LABELS))),
        r"train-images-idx3-ubyte: truncated IDX header \(6 bytes, a 3-d header needs 16\)",
    ),
    Case(
        "idx-count",
        D,
        "fewer labels than images",
        _split(_idx_folder(_idx(IMAGES), _idx(LABELS[:15]))),
        r"train-images-idx3-ubyte has 20 images but train-labels-idx1-ubyte has 15 labels",
    ),
    Case(
        "idx-nan",
        D,
        "float IDX images holding NaN",
        _split(_idx_folder(_idx(np.where(IMAGES > 250, np.nan, IMAGES), 0x0D), _idx(LABELS))),
        r"idx: \d+ input values are NaN or infinite",
    ),
    Case(
        "idx-one-class",
        D,
        "IDX labels of one class",
        _split(_idx_folder(_idx(IMAGES), _idx(LABELS * 0))),
        r"idx: found 1 class; classification needs at least 2",
    ),
    Case(
        "images-one-class",
        D,
        "an image folder with one class",
        _split(_images({"cat": OK_IMG})),
        r"images: an image folder needs one subfolder per class \(at least 2\); found 1",
    ),
    Case(
        "images-corrupt",
        D,
        "a broken image",
        _split(_images({"cat": OK_IMG, "dog": OK_IMG}, corrupt="dog")),
        r"dog/broken\.png: not a readable image",
    ),
    Case(
        "images-sizes",
        D,
        "images of two sizes",
        _split(_images({"cat": OK_IMG, "dog": [(8, 8), (9, 8)]})),
        r"dog/1\.png: size \(9, 8\) differs from the first image's \(8, 8\); resize all images to one size",
    ),
    Case(
        "images-empty-class",
        D,
        "a class folder without images",
        _split(_images({"cat": OK_IMG, "dog": [], "emu": OK_IMG})),
        r"images/dog: class folder without images; add images or remove the folder",
    ),
    Case(
        "images-none",
        D,
        "class folders without images",
        _split(_images({"cat": [], "dog": []})),
        r"images/cat: class folder without images",
    ),
    Case(
        "format-folder",
        D,
        "data-format=npz for a folder",
        lambda ctx: ["split", str(ctx.tmp / "n"), "--data-path", str(ctx.tmp), "--data-format", "npz"],
        r"data-path '.*' must be a file for data-format='npz'",
    ),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_data_file_is_one_clear_line(case: Case, tmp_path: Path):
    check(case, Ctx(tmp_path))
    assert not (tmp_path / "nodes").exists()  # nothing written


def test_nan_data_is_refused_before_a_run_folder_exists(tmp_path: Path):
    np.savez(tmp_path / "nan.npz", x=X_NAN, y=Y)
    cfg = f"{TINY} dataset=file data-path='{tmp_path / 'nan.npz'}'"
    code, _, err = run_cli(["run", "--out", str(tmp_path / "runs"), "--run-config", cfg])
    assert code == 3 and "nan.npz: 3 input values are NaN or infinite" in err
    assert list((tmp_path / "runs").iterdir()) == []


def test_labels_that_are_not_0_to_k_minus_1_are_mapped_by_name(tmp_path: Path):
    np.savez(tmp_path / "d.npz", x=X, y=np.where(Y == 1, 7, 3))
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.classes == ("3", "7") and sorted(set(ds.y.tolist())) == [0, 1]
    (tmp_path / "g.csv").write_text(_table(y=np.where(Y == 1, "dog", "cat")))
    assert load_dataset(tmp_path / "g.csv").classes == ("cat", "dog")


def test_gzipped_idx_with_nan_is_refused(tmp_path: Path):
    root = tmp_path / "idx"
    root.mkdir()
    (root / "t-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(np.full((4, 2, 2), np.nan), 0x0D)))
    (root / "t-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.array([0, 1, 0, 1]))))
    with pytest.raises(Exception, match="16 input values are NaN or infinite"):
        load_dataset(root)
