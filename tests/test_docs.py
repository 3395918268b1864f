"""The docs run. Every Python block of README.md and docs/*.md executes; every `c100 ...` command in them
parses with the CLI's own parser (not run); every relative link and every benchmarks/ script they name
exists; the README's results table is what benchmarks/table.py writes; the README's test command is
what .ci/run runs.

A Python block runs as written, in a folder holding the files it names (photo.jpg, a run folder
runs/cpu-fast, model.safetensors, ...: the tests' tiny-net run and synthetic data, see FIXTURES), with
these stand-ins where the real thing needs a GPU or half an hour:
- training: `c100.config.resolve(...)` returns the tests' tiny-net config (2 epochs on the synthetic
  data), whatever preset and flags the block passes;
- `model.to("cuda")` runs as `model.to("cpu")` on a machine without CUDA.
A block that cannot run here at all is preceded by `<!-- docs-test: skip: REASON -->`, and the
reason is required.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from c100.cli import build_parser
from conftest import tiny_cfg

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# where links and script names are checked too (the generated benchmarks/README.md included)
LINKED = [*DOCS, ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "README.md",
          ROOT / "benchmarks" / "archive" / "README.md", ROOT / "src" / "c100" / "weights" / "PROVENANCE.md",
          *sorted((ROOT / "benchmarks" / "results" / "sweeps").glob("*/README.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"<!-- docs-test: skip: (.+?) -->\s*$")
STAND_INS = {} if torch.cuda.is_available() else {'model.to("cuda")': 'model.to("cpu")'}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def python_blocks() -> list[tuple[str, str, str | None]]:
    """(where, code, skip reason or None) for each ```python block of the docs."""
    blocks = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) != "python":
                continue
            before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            skip = SKIP.search(before)
            line = text[:m.start()].count("\n") + 1
            blocks.append((f"{_rel(doc)}:{line}", m.group(2), skip.group(1) if skip else None))
    return blocks


def command_blocks(text: str) -> list[str]:
    """The lines of the code blocks of a Markdown text: fenced (not python) and indented by 4 spaces; a
    line ending in a backslash goes on in the next."""
    lines = []
    for m in FENCE.finditer(text):
        if m.group(1) in ("", "bash", "sh", "shell", "console"):
            lines += m.group(2).splitlines()
    lines += [line.strip() for line in FENCE.sub("", text).splitlines() if line.startswith("    ")]
    joined, out = "", []
    for line in lines:
        joined += line.strip()
        if joined.endswith("\\"):
            joined = joined[:-1] + " "
            continue
        out.append(joined)
        joined = ""
    return out


def c100_args(line: str) -> list[list[str]]:
    """The arguments of each `c100 ...` (or `.venv/bin/c100`, `-m c100`) call on a shell line."""
    calls = []
    for part in re.split(r"&&|\|\||;|\|", line):
        try:
            tokens = shlex.split(part, comments=True)
        except ValueError:  # an unbalanced quote: not a shell line
            continue
        at = next((i for i, t in enumerate(tokens) if Path(t).name == "c100"), None)
        if at is not None and at + 1 < len(tokens):
            calls.append(tokens[at + 1:])
    return calls


def inline_commands(text: str) -> list[str]:
    """Inline code spans that start a c100 command (`c100 train --resume RUN`, `c100 evaluate MODEL [...]`)."""
    return [m.group(1) for m in re.finditer(r"`((?:[\w./-]*/)?c100 [^`]+)`", text)]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# -- Python blocks ------------------------------------------------------------------------------------

@pytest.fixture
def doc_world(tiny_run, cifar_dir, tmp_path, monkeypatch):
    """A folder holding what the docs' blocks name, as the current directory, and the names they use."""
    from c100 import config
    from c100.export import export

    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    for name, i in (("photo.jpg", 0), ("a.png", 1), ("other.png", 2)):
        Image.fromarray(x[i].transpose(1, 2, 0)).save(name)
    (tmp_path / "runs").mkdir()
    shutil.copytree(tiny_run, tmp_path / "runs" / "cpu-fast", ignore=shutil.ignore_patterns(".lock"))
    export(tiny_run, "safetensors", out=tmp_path / "model.safetensors")
    export(tiny_run, "onnx", out=tmp_path / "model.onnx")
    tiny = tiny_cfg(cifar_dir, epochs="2")
    monkeypatch.setattr(config, "resolve", lambda *args, **kw: copy.deepcopy(tiny))
    return {"images": x, "uint8_images": x, "n": len(x), "pil_image": Image.fromarray(x[3].transpose(1, 2, 0)),
            "array": x[3].transpose(1, 2, 0)}


@pytest.mark.parametrize("where, code, skip", python_blocks(), ids=[b[0] for b in python_blocks()])
def test_python_block_runs(where, code, skip, doc_world):
    if skip:
        pytest.skip(skip)
    pytest.importorskip("onnxruntime", reason="onnxruntime is in the test extra: pip install -e '.[test]'")
    for real, stand_in in STAND_INS.items():
        code = code.replace(real, stand_in)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, where, "exec"), dict(doc_world))


def test_every_python_block_runs_or_says_why_not():
    blocks = python_blocks()
    assert len(blocks) >= 2 and all(reason is None or reason.strip() for _, _, reason in blocks)


# -- command lines --------------------------------------------------------------------------------------

def _parses(args: list[str]) -> str | None:
    """None if the CLI's parser takes these arguments (without running anything), else its error."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit as e:
        if e.code:
            return err.getvalue().strip().splitlines()[-1]
    return None


def test_every_command_line_in_the_docs_parses():
    seen, errors = 0, []
    for doc in [*DOCS, ROOT / "CONTRIBUTING.md"]:
        for line in command_blocks(doc.read_text()):
            for args in c100_args(line):
                seen += 1
                if (error := _parses(args)) is not None:
                    errors.append(f"{_rel(doc)}: c100 {shlex.join(args)}: {error}")
    assert seen >= 10 and not errors, "\n".join(errors)


def test_every_inline_command_names_a_subcommand_and_its_flags():
    """`c100 evaluate MODEL [--split test|val] [--report-tta]` in prose: the subcommand exists and takes
    every flag named (placeholders and brackets are prose, not parsed)."""
    subparsers, seen, errors = _subparsers(), 0, []
    for doc in [*DOCS, ROOT / "CONTRIBUTING.md"]:
        for span in inline_commands(doc.read_text()):
            words = span.split()
            at = next(i for i, w in enumerate(words) if Path(w).name == "c100")
            if at + 1 >= len(words) or words[at + 1].startswith("-"):
                continue  # `c100 --version`, or `c100 ...` as a phrase
            seen += 1
            sub = subparsers.get(words[at + 1])
            if sub is None:
                errors.append(f"{_rel(doc)}: `{span}`: no subcommand {words[at + 1]}")
                continue
            for flag in re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", " ".join(words[at + 2:])):  # --KEY: prose
                if flag not in sub._option_string_actions:
                    errors.append(f"{_rel(doc)}: `{span}`: c100 {words[at + 1]} has no {flag}")
    assert seen >= 30 and not errors, "\n".join(errors)


# -- links, scripts, generated tables ---------------------------------------------------------------------

def test_relative_links_and_named_scripts_exist():
    errors = []
    for doc in LINKED:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (doc.parent / target.split("#")[0]).exists():
                errors.append(f"{_rel(doc)}: link {target}")
        deleted = set(re.findall(r"(benchmarks/[a-z0-9_/]+\.(?:py|sh)): deleted since", text))  # said so
        for script in set(re.findall(r"(?<![\w/.])benchmarks/[a-z0-9_/]+\.(?:py|sh)", text)) - deleted:
            if not (ROOT / script).is_file():
                errors.append(f"{_rel(doc)}: {script}")
    assert not errors, "missing:\n" + "\n".join(errors)


def test_every_sweep_readme_names_the_script_that_made_it():
    for readme in sorted((ROOT / "benchmarks" / "results" / "sweeps").glob("*/README.md")):
        made_by = next((line for line in readme.read_text().splitlines() if line.startswith("Made by: ")), "")
        scripts = re.findall(r"benchmarks/[\w/]+\.(?:py|sh)", made_by)
        assert scripts and all((ROOT / s).is_file() for s in scripts), _rel(readme)


def test_readme_results_table_is_what_table_py_writes():
    spec = importlib.util.spec_from_file_location("table", ROOT / "benchmarks" / "table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    readme = ROOT / "README.md"

    def results(text: str) -> str:
        return text.split(table.START, 1)[1].split(table.END, 1)[0]

    assert results(readme.read_text()) == results(table.render()[readme]), \
        "README.md's results table is stale: run python benchmarks/table.py"


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"    {ci}\n" in (ROOT / "README.md").read_text()
