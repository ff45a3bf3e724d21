"""`pwgf cat-vae` on tiny grey-level IDX files written here: outputs, resume, clear errors."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from pwgf.cli import COMMANDS
from pwgf.experiments import cat_vae


def main(argv: list[str]) -> int:
    """``pwgf cat-vae ...`` through the command's own parser (the CLI's other commands are not
    imported, so this file tests only this command)."""
    assert argv[0] == "cat-vae" and COMMANDS["cat-vae"][0] == "cat_vae"
    parser = cat_vae.argparse.ArgumentParser(prog="pwgf cat-vae")
    cat_vae.add_arguments(parser)
    return cat_vae.run(parser.parse_args(argv[1:]))


def write_idx(path: Path, x: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, x.ndim]) + b"".join(struct.pack(">I", d) for d in x.shape)
    path.write_bytes(gzip.compress(header + x.astype(np.uint8).tobytes()))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """MNIST-format grey images: 3 blurry prototypes plus noise."""
    folder = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    protos = rng.random((3, 28, 28)) * 255
    for name, n in (("train-images-idx3-ubyte.gz", 300), ("t10k-images-idx3-ubyte.gz", 60)):
        x = protos[rng.integers(0, 3, n)] * 0.8 + rng.random((n, 28, 28)) * 50
        write_idx(folder / name, x.clip(0, 255))
    return folder


def args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "cat-vae",
        "--data-dir",
        str(data_dir),
        "--no-verify",
        "--no-download",
        "--shapes",
        "4x2",
        "--train-size",
        "200",
        "--test-size",
        "60",
        "--out",
        str(out),
        "--seeds",
        "1",
        "--quiet",
        *extra,
    ]


def test_small_grid_writes_every_output_and_is_not_recomputed(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    extra = ("--estimators", "st,gumbel-rao:m=3,gapped-st,indecater", "--steps", "4")
    assert main(args(data_dir, out, *extra, "--eval-every", "2")) == 0
    text = capsys.readouterr().out
    assert "Training -ELBO" in text and "Published settings" in text and "gumbel-rao" in text
    summary = json.loads((out / "results.json").read_text())
    rows = summary["tables"]["test_elbo"]
    assert {r["estimator"] for r in rows} == {"st", "gumbel-rao", "gapped-st", "indecater"}
    assert all(r["n"] == 1 and np.isfinite(r["mean"]) for r in rows)
    assert (out / "cat-vae-train_elbo.csv").exists() and (out / "cat-vae-test_elbo.json").exists()
    cell = json.loads((out / "shape-4x2_estimator-gumbel-rao_seed-0" / "result.json").read_text())
    assert cell["status"] == "done" and cell["config"]["options"] == {"m": 3}
    assert [h["step"] for h in cell["metrics"]["history"]] == [0, 2, 4]
    stamp = (out / "shape-4x2_estimator-st_seed-0" / "result.json").stat().st_mtime_ns
    assert main(args(data_dir, out, *extra, "--eval-every", "2")) == 0
    assert (out / "shape-4x2_estimator-st_seed-0" / "result.json").stat().st_mtime_ns == stamp


def test_resumed_run_equals_an_uninterrupted_one(data_dir, tmp_path):
    """A cell stopped after 3 updates and called again with 6 continues from its checkpoint and
    ends where a run of 6 updates in one go does."""
    ns = cat_vae.argparse.Namespace(
        temperature=None,
        lr=None,
        steps=6,
        eval_every=3,
        train_size=200,
        test_size=60,
        data_dir=data_dir,
        no_verify=True,
        no_download=True,
        device="cpu",
        dtype="float64",
    )
    whole = cat_vae.train_cell(cat_vae.cell_config(ns, "4x2", "rebar", 0), tmp_path / "whole")
    half = cat_vae.cell_config(ns, "4x2", "rebar", 0) | {"steps": 3}
    first = cat_vae.train_cell(half, tmp_path / "resumed")
    assert first["steps"] == 3
    again = cat_vae.train_cell(half | {"steps": 6}, tmp_path / "resumed")
    assert again["steps"] == 6 and [h["step"] for h in again["history"]] == [0, 3, 6]
    assert again["history"] == whole["history"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--shapes", "8y4"), "CxL"),
        (("--estimators", "arm"), "no categorical form"),
        (("--estimators", "nonsense"), "unknown estimator"),
        (("--estimators", "gumbel-rao:m=0"), "m must be"),
        (("--steps", "0"), "--steps must be"),
        (("--steps", "3", "--epochs", "1"), "not both"),
        (("--train-size", "10"), "--train-size"),
    ],
)
def test_bad_options_are_clear_errors(data_dir, tmp_path, capsys, extra, message):
    assert main(args(data_dir, tmp_path / "bad", *extra)) == 2
    assert message in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(args(tmp_path, tmp_path / "out", "--estimators", "st", "--steps", "2")) == 2
    assert "not found" in capsys.readouterr().err
