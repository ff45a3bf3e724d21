"""Data for the VAE benchmarks: statically binarised MNIST, MNIST and Fashion-MNIST.

Used by the experiment commands only; the core library never imports it.

Each loader looks for its files in a data directory (``--data-dir``: ``DIR/<subdir>/<file>`` or
``DIR/<file>``), then in the download cache, then in the system locations (Debian's
``dataset-fashion-mnist`` package installs Fashion-MNIST in ``/usr/share/datasets/fashion-mnist``).
A file may be plain or gzip-compressed (recognised by its content, whatever its name). A file
found nowhere is downloaded from its usual public location into the cache when the network
allows (short timeout); otherwise the error says which file to put where.

Content, not file bytes, is verified, so a re-compressed copy still passes:

* IDX files: the size declared by the header is checked first (a truncated file is named as
  such), then the sha256 of the decompressed bytes;
* ``.amat`` files: the sha256 of the parsed uint8 array (C order).

The data-set loaders take ``checksums`` (file name -> sha256; default the real table below,
``{}`` to skip verification) so that tests can verify small files of their own; the file readers
``read_idx`` and ``read_amat`` verify only against a table they are given.

Splits (``load_dataset``):

* ``binarized-mnist``: the fixed 50000 / 10000 / 10000 files (Larochelle & Murray 2011), as in
  REBAR, RELAX, ARM and the paper's Table 2;
* ``mnist``, ``fashion-mnist``: train[:50000] / train[50000:] / the 10000 test images (DisARM's
  split uses train[50000:] as validation). Binarisation ``dynamic`` (default: every pass draws
  Bernoulli(pixel/255) afresh for the training set; the validation and test sets are binarised
  once, with a fixed seed, so evaluations are comparable) or ``threshold`` (pixel > 127).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import PWGFError


class DataError(PWGFError):
    """A data file is corrupt, truncated, of the wrong format or fails its checksum."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data file is in none of the places searched and could not be downloaded."""


# -- the real files ------------------------------------------------------------------------------
# MNIST (LeCun, Cortes & Burges): sha256 of the decompressed IDX bytes, and their size. Source:
# shared/data/README.md of this project; the md5 of the same bytes are the published ones
# (6bbc9ace..., a25bea73..., 2646ac64..., 27ae3e4e...).
MNIST_FILES: dict[str, tuple[str, int]] = {
    "train-images-idx3-ubyte": (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        47040016,
    ),
    "train-labels-idx1-ubyte": (
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        60008,
    ),
    "t10k-images-idx3-ubyte": (
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        7840016,
    ),
    "t10k-labels-idx1-ubyte": (
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        10008,
    ),
}

# Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): sha256 of the decompressed IDX bytes, computed
# here from Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1 (which re-compresses the
# upstream .gz files, so the published md5 of the .gz files, 8d4fb7e6..., do not apply to it).
# The md5 of the same decompressed bytes (f4a8712d7a061bf5bd6d2ca38dc4d50a,
# 9018921c3c673c538a1fc5bad174d6f9, 8181f5470baa50b63fa0f6fddb340f0a,
# 15d484375f8d13e6eb1aabb0c3f46965, in the order below) agree with the md5 of the uncompressed
# files that independent public code lists beside the upstream .gz checksums.
FASHION_FILES: dict[str, tuple[str, int]] = {
    "train-images-idx3-ubyte": (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        47040016,
    ),
    "train-labels-idx1-ubyte": (
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        60008,
    ),
    "t10k-images-idx3-ubyte": (
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        7840016,
    ),
    "t10k-labels-idx1-ubyte": (
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        10008,
    ),
}

# Statically binarised MNIST: sha256 of the parsed uint8 array (C order) and its rows. Source:
# shared/data/README.md of this project.
BINARIZED_FILES: dict[str, tuple[str, int]] = {
    "binarized_mnist_train.amat": (
        "43490d4d6ac9002727af4426d8748609fdb7e4094fa65ad8d681ea60082a7a5a",
        50000,
    ),
    "binarized_mnist_valid.amat": (
        "069b4f0beb389b776478c3e872b4df71c95ac4be64d7cbe6d32e24ebac8e6d5e",
        10000,
    ),
    "binarized_mnist_test.amat": (
        "ca0294c3b8d984c7a1dc891015a8eea6f37bae59a34e35ea0fc8c47110a8dd86",
        10000,
    ),
}


@dataclass(frozen=True)
class Source:
    """Where a data set's files live: subfolder names, download locations, system folders."""

    name: str
    subdirs: tuple[str, ...]
    urls: tuple[str, ...]  # base URLs, tried in order; the file name is appended
    remote_suffix: str  # what the public copies add to the file name (".gz" or "")
    system_dirs: tuple[str, ...] = ()


SOURCES: dict[str, Source] = {
    "mnist": Source(
        "MNIST",
        ("mnist", "MNIST"),
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        ".gz",
    ),
    "fashion-mnist": Source(
        "Fashion-MNIST",
        ("fashion-mnist", "fashion_mnist", "fashion"),
        (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
        ".gz",
        ("/usr/share/datasets/fashion-mnist",),
    ),
    "binarized-mnist": Source(
        "statically binarised MNIST",
        ("binarized_mnist", "binarized-mnist"),
        ("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",),
        "",
    ),
}

DATASETS = ("binarized-mnist", "mnist", "fashion-mnist")
BINARIZATIONS = ("dynamic", "threshold")
DOWNLOAD_TIMEOUT = 10.0  # seconds per connection attempt
EVAL_BINARIZATION_SEED = 1234  # fixed draw for dynamically binarised validation and test sets


def default_cache_dir() -> Path:
    """``$PWGF_DATA_CACHE``, else ``$XDG_CACHE_HOME/pwgf/data``, else ``~/.cache/pwgf/data``."""
    env = os.environ.get("PWGF_DATA_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pwgf" / "data"


def downloads_allowed() -> bool:
    """False when ``PWGF_NO_DOWNLOAD`` is set (to anything but ``0`` or empty)."""
    return os.environ.get("PWGF_NO_DOWNLOAD", "") in ("", "0")


# -- finding and fetching files ------------------------------------------------------------------
def candidate_dirs(
    dataset: str, data_dir: str | Path | None, cache_dir: str | Path | None
) -> list[Path]:
    """Folders searched for ``dataset``'s files, in order."""
    src = SOURCES[dataset]
    roots = [Path(data_dir)] if data_dir is not None else []
    env = os.environ.get("PWGF_DATA_DIR")
    if env and data_dir is None:
        roots.append(Path(env))
    roots.append(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    out: list[Path] = []
    for root in roots:
        out.extend(root / sub for sub in src.subdirs)
        out.append(root)
    out.extend(Path(d) for d in src.system_dirs)
    return out


def find_file(
    dataset: str,
    name: str,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool | None = None,
) -> Path:
    """The path of ``name`` (plain or ``.gz``) for ``dataset``, downloading it if need be."""
    dirs = candidate_dirs(dataset, data_dir, cache_dir)
    for d in dirs:
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    src = SOURCES[dataset]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / src.subdirs[0] / f"{name}{src.remote_suffix}"
    if download is None:
        download = downloads_allowed()
    why = "downloads are off (download=False or PWGF_NO_DOWNLOAD)"
    if download:
        try:
            return fetch(src, f"{name}{src.remote_suffix}", target)
        except DataError as e:
            why = str(e)
    where = data_dir if data_dir is not None else "DIR"
    looked = ", ".join(str(d) for d in dict.fromkeys(dirs))
    raise DataNotFoundError(
        f"{src.name} file '{name}' (plain or .gz) not found; looked in: {looked}. "
        f"Download failed: {why}. Get it from {src.urls[0]}{name}{src.remote_suffix} and put it "
        f"in {Path(where) / src.subdirs[0]}/ (then pass --data-dir {where}), or in the cache "
        f"folder {target.parent}/."
    )


def fetch(src: Source, filename: str, target: Path, timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Download ``filename`` from the first of ``src.urls`` that answers, into ``target``."""
    errors = []
    for base in src.urls:
        url = base + filename
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{filename}.")
                try:
                    with os.fdopen(fd, "wb") as out:
                        shutil.copyfileobj(resp, out)
                    os.replace(tmp, target)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            return target
        except (OSError, ValueError) as e:  # URLError, timeouts, HTTP errors, read-only cache
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
    raise DataError("; ".join(errors))


# -- reading and verifying -----------------------------------------------------------------------
def read_bytes(path: str | Path) -> bytes:
    """The file's content, decompressed if it is gzip (by its magic bytes, not its name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(
            f"{path}: corrupt or truncated gzip file ({e}); delete it and fetch it again"
        ) from e


def sha256(data: bytes | np.ndarray) -> str:
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).tobytes()
    return hashlib.sha256(data).hexdigest()


def _check_sum(path: Path, got: str, expected: str | None, what: str) -> None:
    if expected is not None and got != expected:
        raise DataError(
            f"{path}: checksum mismatch (sha256 of the {what} is {got}, expected {expected}); "
            "the file is corrupt or not the expected version: delete it and fetch it again"
        )


def _strip_gz(path: Path) -> str:
    return path.name[:-3] if path.name.endswith(".gz") else path.name


IDX_TYPES = {0x08: np.uint8}


def read_idx(
    path: str | Path,
    checksums: Mapping[str, str] | None = None,
    expect_ndim: int | None = None,
) -> np.ndarray:
    """Parse an IDX file (plain or gzip) of unsigned bytes, checking its header and size, and the
    sha256 of its decompressed bytes against ``checksums[name]`` (name without ``.gz``) when
    ``checksums`` is given and names the file."""
    path = Path(path)
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype, ndim = data[2], data[3]
    if dtype not in IDX_TYPES:
        raise DataError(f"{path}: IDX element type 0x{dtype:02x} is not unsigned bytes (0x08)")
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{path}: IDX file with {ndim} dimensions, expected {expect_ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes)")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    size = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != size:
        state = "truncated" if len(data) < size else "longer than its header says"
        raise DataError(
            f"{path}: {state}: the header declares shape {tuple(dims)} ({size} bytes), "
            f"the (decompressed) file has {len(data)} bytes"
        )
    if checksums is not None:
        _check_sum(path, sha256(data), checksums.get(_strip_gz(path)), "decompressed bytes")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


# byte classes for .amat parsing: 0 invalid, 1 the digits 0/1, 2 whitespace
_AMAT_CLASS = np.zeros(256, np.uint8)
_AMAT_CLASS[[ord("0"), ord("1")]] = 1
_AMAT_CLASS[[ord(" "), ord("\t"), ord("\r"), ord("\n")]] = 2


def read_amat(
    path: str | Path, checksums: Mapping[str, str] | None = None, width: int = 784
) -> np.ndarray:
    """Parse a binarised-MNIST ``.amat`` file (plain or gzip): one image a line, ``width``
    whitespace-separated 0/1 values. Verifies the sha256 of the parsed uint8 array against
    ``checksums[name]`` (name without ``.gz``) when ``checksums`` is given and names the file."""
    path = Path(path)
    a = np.frombuffer(read_bytes(path), np.uint8)
    cls = _AMAT_CLASS[a]
    bad = cls == 0
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{path}: not a binary .amat file (unexpected byte {bytes(a[i : i + 1])!r} at "
            f"offset {i}; expected only 0/1 values separated by whitespace)"
        )
    stride = 2 * width
    rows = len(a) // stride
    if (
        rows * stride == len(a)
        and (cls[0::2] == 1).all()
        and (a[stride - 1 :: stride] == 10).all()
        and np.count_nonzero(a == 10) == rows
    ):
        # the usual layout: "v v ... v\n", one separator after each value (checked above: the
        # bytes between values are whitespace, so no two digits are glued)
        x = (a[0::2] - ord("0")).reshape(-1, width)
        if (cls[1::2] != 2).any():
            raise DataError(f"{path}: not a binary .amat file (values other than 0 and 1)")
    else:
        x = _parse_amat_general(path, a, cls, width)
    if checksums is not None:
        _check_sum(path, sha256(x), checksums.get(_strip_gz(path)), "parsed uint8 array")
    return x


def _parse_amat_general(path: Path, a: np.ndarray, cls: np.ndarray, width: int) -> np.ndarray:
    """Any whitespace layout: values counted per line."""
    is_digit = cls == 1
    if (is_digit[1:] & is_digit[:-1]).any():
        raise DataError(f"{path}: not a binary .amat file (values other than 0 and 1)")
    # digits per line, lines split at '\n' (a missing final newline is accepted)
    line_end = np.flatnonzero(a == ord("\n"))
    if len(a) and a[-1] != ord("\n"):
        line_end = np.append(line_end, len(a))
    seen = np.cumsum(is_digit, dtype=np.int32)[line_end - 1] if len(line_end) else line_end
    counts = np.diff(np.concatenate([[0], seen]))
    counts = counts[counts > 0]  # blank lines are ignored
    if len(counts) == 0:
        raise DataError(f"{path}: empty .amat file")
    wrong = np.flatnonzero(counts != width)
    if len(wrong):
        raise DataError(
            f"{path}: line {int(wrong[0]) + 1} has {int(counts[wrong[0]])} values, expected "
            f"{width} (truncated or not a 28x28 binarised MNIST file)"
        )
    return (a[is_digit] - ord("0")).reshape(-1, width)


MNIST_FILES_SHA = {k: v[0] for k, v in MNIST_FILES.items()}
FASHION_SHA = {k: v[0] for k, v in FASHION_FILES.items()}
BINARIZED_SHA = {k: v[0] for k, v in BINARIZED_FILES.items()}
DEFAULT_CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": MNIST_FILES_SHA,
    "fashion-mnist": FASHION_SHA,
    "binarized-mnist": BINARIZED_SHA,
}


# -- data sets -----------------------------------------------------------------------------------
@dataclass
class Dataset:
    """Train / validation / test images as uint8 tensors ``(N, 784)`` and how to binarise them.

    ``binarization``: ``"static"`` (values are already 0/1), ``"dynamic"`` or ``"threshold"``.
    ``valid`` and ``test`` are stored already binarised (0/1) for every scheme.
    """

    name: str
    binarization: str
    train: Tensor
    valid: Tensor
    test: Tensor
    files: dict[str, str]

    def binarize_train(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A training batch (uint8) as float 0/1, freshly binarised if ``dynamic``."""
        if self.binarization == "dynamic":
            p = x.float() / 255.0
            u = torch.rand(p.shape, generator=generator, device=p.device)
            return (u < p).float()
        if self.binarization == "threshold":
            return (x > 127).float()
        return x.float()

    def to(self, device: torch.device | str) -> Dataset:
        """A copy on ``device``."""
        moved = (t.to(device) for t in (self.train, self.valid, self.test))
        return Dataset(self.name, self.binarization, *moved, dict(self.files))

    def describe(self) -> str:
        sizes = f"{len(self.train)}/{len(self.valid)}/{len(self.test)}"
        return f"{self.name} ({self.binarization} binarisation, train/valid/test {sizes})"


def _images(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr.reshape(len(arr), -1))


def load_binarized_mnist(
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool | None = None,
    checksums: Mapping[str, str] | None = None,
) -> Dataset:
    """The fixed 50000 / 10000 / 10000 statically binarised MNIST."""
    table = BINARIZED_SHA if checksums is None else checksums
    parts, files = {}, {}
    for split in ("train", "valid", "test"):
        name = f"binarized_mnist_{split}.amat"
        path = find_file("binarized-mnist", name, data_dir, cache_dir, download)
        parts[split] = torch.from_numpy(read_amat(path, table).copy())
        files[split] = str(path)
    return Dataset(
        "binarized-mnist", "static", parts["train"], parts["valid"], parts["test"], files
    )


def _read_images(
    dataset: str,
    data_dir: str | Path | None,
    cache_dir: str | Path | None,
    download: bool | None,
    checksums: Mapping[str, str] | None,
) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, str]]:
    """The training and test images of an IDX data set as uint8 ``(N, 784)`` arrays, and the
    files read."""
    arrays, files = {}, {}
    for key, name in (("train", "train-images-idx3-ubyte"), ("test", "t10k-images-idx3-ubyte")):
        path = find_file(dataset, name, data_dir, cache_dir, download)
        arrays[key] = _images(read_idx(path, checksums, expect_ndim=3))
        files[key] = str(path)
    return (arrays["train"], arrays["test"]), files


@functools.lru_cache(maxsize=4)
def load_idx_images(
    dataset: str,
    data_dir: str | None = None,
    download: bool | None = None,
    verify: bool = True,
) -> tuple[Tensor, Tensor, dict[str, str]]:
    """All training and test images of MNIST or Fashion-MNIST, uint8 ``(N, 784)``, not
    binarised, and the files read (checksums of the decompressed bytes verified unless ``verify``
    is False). Cached per arguments: the tensors are shared, callers must not modify them."""
    if dataset not in DEFAULT_CHECKSUMS:
        raise PWGFError(f"unknown data set {dataset!r}; known: {', '.join(DEFAULT_CHECKSUMS)}")
    table = DEFAULT_CHECKSUMS[dataset] if verify else None
    (train, test), files = _read_images(dataset, data_dir, None, download, table)
    return torch.from_numpy(train.copy()), torch.from_numpy(test.copy()), files


def load_idx_dataset(
    dataset: str,
    binarization: str = "dynamic",
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool | None = None,
    checksums: Mapping[str, str] | None = None,
    n_train: int = 50000,
) -> Dataset:
    """MNIST or Fashion-MNIST: train[:n_train], train[n_train:] as validation, the test set."""
    if binarization not in BINARIZATIONS:
        raise PWGFError(f"binarization must be one of {BINARIZATIONS}, got {binarization!r}")
    table = DEFAULT_CHECKSUMS[dataset] if checksums is None else checksums
    (train, test), files = _read_images(dataset, data_dir, cache_dir, download, table)
    if not 0 < n_train < len(train):
        raise DataError(
            f"{files['train']}: {len(train)} training images, cannot hold out train[{n_train}:]"
        )
    t_train = torch.from_numpy(train[:n_train].copy())
    t_valid = torch.from_numpy(train[n_train:].copy())
    t_test = torch.from_numpy(test.copy())
    gen = torch.Generator().manual_seed(EVAL_BINARIZATION_SEED)

    def fixed(x: Tensor) -> Tensor:
        if binarization == "threshold":
            return (x > 127).to(torch.uint8)
        return (torch.rand(x.shape, generator=gen) < x.float() / 255.0).to(torch.uint8)

    return Dataset(dataset, binarization, t_train, fixed(t_valid), fixed(t_test), files)


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    binarization: str = "dynamic",
    cache_dir: str | Path | None = None,
    download: bool | None = None,
    checksums: Mapping[str, str] | None = None,
) -> Dataset:
    """One of ``DATASETS`` with its standard split (see the module's docstring).

    Parsed data sets are kept in memory for the life of the process (keyed by the files' paths,
    sizes and modification times), so a grid of runs parses each file once.
    """
    if name not in DATASETS:
        raise PWGFError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "binarized-mnist":
        binarization = "static"
    elif binarization not in BINARIZATIONS:
        raise PWGFError(f"binarization must be one of {BINARIZATIONS}, got {binarization!r}")
    table = None if checksums is None else tuple(sorted(checksums.items()))
    key = (name, binarization, str(data_dir), str(cache_dir), table)
    hit = _MEMO.get(key)
    if hit is not None and hit[0] == _stamp(hit[1].files.values()):
        return hit[1]
    if name == "binarized-mnist":
        ds = load_binarized_mnist(data_dir, cache_dir, download, checksums)
    else:
        ds = load_idx_dataset(name, binarization, data_dir, cache_dir, download, checksums)
    _MEMO[key] = (_stamp(ds.files.values()), ds)
    return ds


_MEMO: dict[tuple, tuple[tuple, Dataset]] = {}


def _stamp(paths: Iterable[str]) -> tuple:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((p, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((p, None, None))
    return tuple(out)


def verify(names: Sequence[str] = DATASETS, data_dir: str | Path | None = None) -> dict[str, str]:
    """Load and verify each data set; returns name -> description (for a quick check)."""
    return {n: load_dataset(n, data_dir, download=False).describe() for n in names}
