"""The command-line conventions every ``pwgf`` command shares (docs/guide/cli.md)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pwgf
from pwgf.cli import COMMANDS, build_parser, main
from pwgf.experiments import diagkit as dk

#: the commands whose every option must have a description (the others at least show defaults)
DESCRIBED = ("demo", "toy", "vae", "poisson-bias", "diagnose", "estimators")


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def one_error_line(capsys, command: str) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"pwgf {command}: error: "), err
    return err[0]


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"pwgf {pwgf.__version__}"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_shows_every_default(command, capsys):
    p = subparsers()[command]
    assert isinstance(p.formatter_class, type)
    assert issubclass(p.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    for action in p._actions:
        if not action.option_strings or action.dest == "help":
            continue
        text = p.formatter_class(prog="x")._get_help_string(action)
        if action.default not in (None, False, argparse.SUPPRESS, []):
            states_it = text.rstrip().endswith(f"({action.default})")
            assert "%(default)" in text or states_it, (command, action.option_strings)
        if command in DESCRIBED:
            assert action.help and not action.help.startswith("default:"), (
                command,
                action.option_strings,
            )
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "(default: " in capsys.readouterr().out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_one_thread_policy(command, capsys):
    p = subparsers()[command]
    action = p._option_string_actions["--threads"]
    assert action.default == dk.DEFAULT_THREADS == 1
    assert action.help == dk.THREADS_HELP
    assert p.parse_args([]).threads == dk.DEFAULT_THREADS
    with pytest.raises(SystemExit) as exc:
        main([command, "--threads", "-1"])
    assert exc.value.code == 2
    line = one_error_line(capsys, command)
    assert "--threads" in line and "'-1'" in line


def test_threads_are_applied_and_restored(monkeypatch):
    from pwgf.experiments import estimators as cmd

    seen = []
    monkeypatch.setattr(cmd, "run", lambda args: seen.append(torch.get_num_threads()) or 0)
    before = torch.get_num_threads()
    assert main(["estimators", "--threads", "2"]) == 0
    assert main(["estimators"]) == 0
    assert seen == [2, 1] and torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["demo", "--draws", "0"], "argument --draws: expected an integer >= 1, got '0'"),
        (["toy", "--lr", "nan"], "argument --lr: expected a positive finite number"),
        (["toy", "--estimators", "nope", "--iterations", "1"], "unknown estimator 'nope'"),
        (["toy", "--estimators", "pwgf:bandwith=2"], r"has no option \['bandwith'\]"),
        (["vae", "--lr", "-1"], "argument --lr: expected a positive finite number"),
        (["vae", "--iw-limit", "0"], "argument --iw-limit: expected an integer >= 1"),
        (["vae", "--iw-limit", "-5"], "argument --iw-limit: expected an integer >= 1"),
        (["vae", "--iw-samples", "-1"], "argument --iw-samples: expected an integer >= 0"),
        (["vae", "--stop-after", "0"], "argument --stop-after: expected an integer >= 1"),
        (["vae", "--device", "warp-drive"], "not a torch device"),
        (["vae", "--dtype", "float16"], "argument --dtype: invalid choice"),
        (["vae", "--estimator", "pwgf:step"], "options are written key=value"),
        (
            ["vae", "--estimator", "pwgf:step=0.5", "--estimator-option", "step=0.1"],
            "both in the spec and as a keyword",
        ),
        (["poisson-bias", "--rates", "1,abc"], "--rates: expected positive finite numbers"),
        (["poisson-bias", "--costs", "nope"], "unknown cost 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing written where the tests run
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    assert code == 2
    line = one_error_line(capsys, argv[0])
    assert re.search(match, line), line
    assert "Traceback" not in line


def test_estimator_specs_in_diagnostic_commands(tmp_path, capsys):
    """``--estimators`` takes specs with options, commas and all, in every diagkit command."""
    names = dk.estimator_names("bernoulli", dk.split_names("st,pwgf:step=0.5,bandwidth=2,arm"))
    assert names == ["st", "pwgf:step=0.5,bandwidth=2", "arm"]
    assert pwgf.get_estimator(names[1]).step == 0.5
    argv = ["toy", "--estimators", "pwgf:step=0.5,bandwidth=2", "--iterations", "3"]
    assert main([*argv, "--var-every", "3", "--var-draws", "4", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "toy.json").read_text())
    text = json.dumps(report)
    assert "pwgf:step=0.5,bandwidth=2" in text and "error" not in text


def test_console_script_prints_no_traceback(tmp_path):
    """The installed entry point: one line on stderr, exit code 2."""
    env = {**os.environ, "PYTHONPATH": str(Path(pwgf.__file__).parents[1])}
    r = subprocess.run(
        [sys.executable, "-m", "pwgf.cli", "toy", "--estimators", "nope"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("pwgf toy: error: unknown estimator 'nope'")
