"""Data loaders of the VAE experiments: parsing, checksums, errors, splits (small files written
here; the real files only where this machine has them)."""

from __future__ import annotations

import gzip
import hashlib
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from pwgf.experiments import data as D

REAL = Path("/work/shared/data")


# -- writers -------------------------------------------------------------------------------------
def amat_bytes(x: np.ndarray) -> bytes:
    return "".join(" ".join(map(str, row)) + "\n" for row in x.tolist()).encode()


def write_amat(path: Path, x: np.ndarray, gz: bool = False) -> Path:
    raw = amat_bytes(x)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def idx_bytes(x: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, x.ndim]) + b"".join(struct.pack(">I", d) for d in x.shape)
    return header + np.ascontiguousarray(x, dtype=np.uint8).tobytes()


def write_idx(path: Path, x: np.ndarray, gz: bool = False) -> Path:
    raw = idx_bytes(x)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def binary_images(n: int, seed: int = 0, width: int = 784) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, width)) < 0.2).astype(np.uint8)


def grey_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def sha_array(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


# -- .amat ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_amat_parses_and_verifies(tmp_path, gz):
    x = binary_images(30)
    name = "binarized_mnist_valid.amat"
    p = write_amat(tmp_path / (name + (".gz" if gz else "")), x, gz)
    got = D.read_amat(p, {name: sha_array(x)})
    assert got.dtype == np.uint8 and got.shape == (30, 784)
    np.testing.assert_array_equal(got, x)


def test_amat_other_whitespace_layout(tmp_path):
    x = binary_images(3, width=6)
    text = "\n".join("  ".join(map(str, r)) + " \t" for r in x.tolist()) + "\n\n"
    p = tmp_path / "odd.amat"
    p.write_text(text)
    np.testing.assert_array_equal(D.read_amat(p, width=6), x)


def test_amat_wrong_checksum(tmp_path):
    x = binary_images(5)
    p = write_amat(tmp_path / "binarized_mnist_test.amat", x)
    with pytest.raises(D.DataError, match=r"binarized_mnist_test\.amat: checksum mismatch"):
        D.read_amat(p, {"binarized_mnist_test.amat": "0" * 64})


def test_amat_truncated_line(tmp_path):
    raw = amat_bytes(binary_images(4))
    p = tmp_path / "cut.amat"
    p.write_bytes(raw[: len(raw) - 101])
    with pytest.raises(D.DataError, match=r"cut\.amat: line 4 has \d+ values, expected 784"):
        D.read_amat(p)


def test_amat_truncated_gzip(tmp_path):
    blob = gzip.compress(amat_bytes(binary_images(20)))
    p = tmp_path / "binarized_mnist_train.amat.gz"
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(D.DataError, match=r"binarized_mnist_train\.amat\.gz: corrupt or truncated"):
        D.read_amat(p)


def test_amat_not_binary(tmp_path):
    p = tmp_path / "x.amat"
    p.write_text("0 1 0.5 1\n")
    with pytest.raises(D.DataError, match=r"x\.amat: not a binary \.amat file"):
        D.read_amat(p, width=4)
    p.write_text("0 1 2 1\n")
    with pytest.raises(D.DataError, match="not a binary"):
        D.read_amat(p, width=4)


# -- IDX -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_idx_parses_and_verifies(tmp_path, gz):
    x = grey_images(12)
    raw = idx_bytes(x)
    name = "t10k-images-idx3-ubyte"
    p = write_idx(tmp_path / (name + (".gz" if gz else "")), x, gz)
    got = D.read_idx(p, {name: hashlib.sha256(raw).hexdigest()}, expect_ndim=3)
    np.testing.assert_array_equal(got, x)


def test_idx_errors(tmp_path):
    x = grey_images(6)
    raw = idx_bytes(x)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(raw[:-10])
    with pytest.raises(D.DataError, match=r"train-images-idx3-ubyte: truncated: .*\(6, 28, 28\)"):
        D.read_idx(p)
    p.write_bytes(b"\x00\x00\x0d\x03" + raw[4:])
    with pytest.raises(D.DataError, match="not unsigned bytes"):
        D.read_idx(p)
    p.write_bytes(b"PK\x03\x04" + raw[4:])
    with pytest.raises(D.DataError, match="not an IDX file"):
        D.read_idx(p)
    p.write_bytes(raw)
    with pytest.raises(D.DataError, match="3 dimensions, expected 2"):
        D.read_idx(p, expect_ndim=2)
    with pytest.raises(D.DataError, match="train-images-idx3-ubyte: checksum mismatch"):
        D.read_idx(p, {"train-images-idx3-ubyte": "f" * 64})
    # a re-compressed copy still verifies: the checksum is of the content
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(raw, compresslevel=1))
    D.read_idx(gz, {"train-images-idx3-ubyte": hashlib.sha256(raw).hexdigest()})


# -- finding files, downloads --------------------------------------------------------------------
def test_missing_file_names_path_and_source(tmp_path):
    with pytest.raises(D.DataNotFoundError) as err:
        D.find_file("binarized-mnist", "binarized_mnist_train.amat", tmp_path, tmp_path, False)
    msg = str(err.value)
    assert str(tmp_path / "binarized_mnist") in msg
    assert "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/" in msg
    assert "binarized_mnist_train.amat" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_download_failure_is_quick_and_clear(tmp_path, monkeypatch):
    calls = []

    def refuse(url, timeout=None):
        calls.append((url, timeout))
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(D.urllib.request, "urlopen", refuse)
    with pytest.raises(D.DataNotFoundError, match=r"Download failed: .*no network") as err:
        D.find_file("mnist", "t10k-images-idx3-ubyte", tmp_path, tmp_path / "cache", True)
    assert len(calls) == len(D.SOURCES["mnist"].urls)
    assert all(t is not None and t <= 30 for _, t in calls)
    assert "t10k-images-idx3-ubyte.gz" in str(err.value)
    assert not list((tmp_path / "cache").rglob("*.gz"))  # nothing half-written left behind


def test_download_goes_to_cache(tmp_path, monkeypatch):
    import io

    payload = gzip.compress(idx_bytes(grey_images(3)))
    monkeypatch.setattr(D.urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(payload))
    p = D.find_file("mnist", "t10k-images-idx3-ubyte", tmp_path / "ro", tmp_path / "cache", True)
    assert p == tmp_path / "cache" / "mnist" / "t10k-images-idx3-ubyte.gz"
    assert D.read_idx(p).shape == (3, 28, 28)


def test_search_order_and_subdirs(tmp_path):
    sub = tmp_path / "fashion-mnist"
    sub.mkdir()
    write_idx(sub / "t10k-images-idx3-ubyte.gz", grey_images(2), gz=True)
    p = D.find_file("fashion-mnist", "t10k-images-idx3-ubyte", tmp_path, tmp_path / "c", False)
    assert p == sub / "t10k-images-idx3-ubyte.gz"


# -- data sets -----------------------------------------------------------------------------------
def write_binarized(folder: Path, sizes=(60, 20, 20), gz: bool = True) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    table = {}
    for i, (split, n) in enumerate(zip(("train", "valid", "test"), sizes, strict=True)):
        x = binary_images(n, seed=i)
        name = f"binarized_mnist_{split}.amat"
        write_amat(folder / (name + (".gz" if gz else "")), x, gz)
        table[name] = sha_array(x)
    return table


def test_load_binarized_with_table_and_default(tmp_path):
    table = write_binarized(tmp_path / "binarized_mnist")
    ds = D.load_dataset("binarized-mnist", tmp_path, checksums=table, download=False)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (60, 20, 20)
    assert ds.binarization == "static" and ds.train.dtype == torch.uint8
    x = ds.binarize_train(ds.train[:5])
    assert x.dtype == torch.float32 and set(x.unique().tolist()) <= {0.0, 1.0}
    # the default table is the real one, which these files fail
    with pytest.raises(D.DataError, match="checksum mismatch"):
        D.load_dataset("binarized-mnist", tmp_path / "binarized_mnist", download=False)


def test_load_idx_splits_and_binarisation(tmp_path):
    train, test = grey_images(30, 1), grey_images(7, 2)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train, gz=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test)
    ds = D.load_idx_dataset("mnist", "dynamic", tmp_path, tmp_path / "c", False, {}, n_train=24)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (24, 6, 7)
    np.testing.assert_array_equal(ds.train.numpy(), train[:24].reshape(24, -1))
    assert set(ds.valid.unique().tolist()) <= {0, 1}  # evaluation sets binarised once
    g = torch.Generator().manual_seed(0)
    a, b = ds.binarize_train(ds.train, g), ds.binarize_train(ds.train, g)
    assert not torch.equal(a, b)  # fresh draws every pass
    p = ds.train.float() / 255
    assert abs(float(a.mean() - p.mean())) < 0.02
    th = D.load_idx_dataset("mnist", "threshold", tmp_path, tmp_path / "c", False, {}, n_train=24)
    assert torch.equal(th.binarize_train(th.train), (th.train > 127).float())
    assert torch.equal(th.test, torch.from_numpy((test.reshape(7, -1) > 127).astype(np.uint8)))


def test_unknown_dataset_and_binarisation():
    with pytest.raises(D.PWGFError, match="unknown data set"):
        D.load_dataset("cifar")
    with pytest.raises(D.PWGFError, match="binarization"):
        D.load_dataset("mnist", binarization="soft")


@pytest.mark.skipif(not REAL.is_dir(), reason="the real data files are not on this machine")
def test_real_files_verify():
    p = REAL / "mnist" / "t10k-images-idx3-ubyte.gz"
    x = D.read_idx(p, D.MNIST_FILES_SHA, expect_ndim=3)
    assert x.shape == (10000, 28, 28)
    p = REAL / "binarized_mnist" / "binarized_mnist_test.amat.gz"
    assert D.read_amat(p, D.BINARIZED_SHA).shape == (10000, 784)
