"""The command line's one vocabulary: each flag means one thing in every subcommand that takes it."""

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from c100.cli import DATA_DIR_HELP, build_parser, main


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return parser._option_string_actions.get(flag)


def test_model_and_checkpoint_are_the_same_words_everywhere(tiny_run, tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(img)
    assert main(["predict", str(img), "--weights", str(tiny_run), "--checkpoint", "best", "--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert main(["predict", str(img), "-w", str(tiny_run), "-c", "best", "--json", "--chunk-size", "1"]) == 0
    assert json.loads(capsys.readouterr().out) == best
    out = tmp_path / "e.safetensors"
    assert main(["export", str(tiny_run), "--checkpoint", "best", "--out", str(out)]) == 0
    assert json.loads((tmp_path / "e.safetensors.json").read_text())["trained"]["epochs"] >= 1


def test_model_errors(tiny_run, capsys):
    assert main(["evaluate"]) == 2
    assert "which model? pass 'default'" in capsys.readouterr().err
    assert main(["evaluate", str(tiny_run), "-w", "default"]) == 2
    assert "two models given" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["evaluate", "RUN", "--checkpoint", "first"],
    ["predict", "a.png", "--checkpoint", "RUN"],  # the old `--checkpoint RUN`: now --weights RUN
    ["predict", "a.png", "--which", "best"],  # removed in 0.2.0: --checkpoint
    ["evaluate", "RUN", "--device", "gpu"],
    ["serve", "--device", "gpu"],
    ["tune", "--device", "gpu"],
    ["evaluate", "RUN", "--tta"],  # evaluate's is --report-tta: --tta is train's, part of the model
    ["tune", "--seed", "1"],  # tune's is --sampler-seed: --seed is train's, the split and the batches
    ["report", "RUN", "--weights", "default"],  # a report is of a run folder
])
def test_what_argparse_refuses(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2 and "error:" in capsys.readouterr().err


def test_device_is_checked_in_every_subcommand_that_takes_it(capsys):
    takers = [name for name, parser in _subparsers().items() if _option(parser, "--device")]
    assert len(takers) >= 10
    for name in takers:
        if name == "train":  # a config key, checked with the others before anything runs
            assert main(["train", "--device", "gpu"]) == 2
            assert "--device 'gpu' is not one of: auto, cpu, cuda, mps" in capsys.readouterr().err
        else:
            assert tuple(_option(_subparsers()[name], "--device").choices) == ("auto", "cpu", "cuda", "mps"), name


def test_one_help_text_for_data_dir_and_every_out_says_what_it_is():
    for name, parser in _subparsers().items():
        data_dir = _option(parser, "--data-dir")
        if data_dir is not None:
            assert data_dir.help == DATA_DIR_HELP, name
        out = _option(parser, "--out")
        if out is not None:  # a folder, a file or a path without extension: the metavar and the help agree
            kind = {"DIR": "folder", "FILE": "file", "STEM": "path without extension"}[out.metavar]
            assert out.help.startswith(kind), name


def test_report_takes_a_run_folder(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["report", "--help"])
    usage = capsys.readouterr().out
    assert "RUN" in usage and "MODEL" not in usage
