"""The benchmark scripts' error handling, and the index of their results (benchmarks/results/index.yaml)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_record_bad_set_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "record.py"), "--set", "res milestones=0.4",
                        "--no-test", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        "record.py: error: flag: unknown config key 'res milestones'; see `c100 train --help` for the keys"]
    assert not (tmp_path / "runs").exists() and not list((tmp_path / "out").glob("*.json"))


def test_results_index_matches_the_files():
    """Every file under benchmarks/results/ is in results/index.yaml (or beside its JSON), and back."""
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "table.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_results_index_names_what_is_missing(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("table", ROOT / "benchmarks" / "table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "a.json").write_text("{}")
    (tmp_path / "records" / "a.log").write_text("")  # travels with a.json: needs no entry
    (tmp_path / "records" / "b.json").write_text("{}")
    (tmp_path / "index.yaml").write_text(
        "results:\n"
        "  - {file: records/a.json, status: record, title: a}\n"
        "  - {file: records/gone.json, status: record, title: gone}\n"
        "  - {file: records/b.json, status: archive, title: b}\n")
    monkeypatch.setattr(table, "RESULTS", tmp_path)
    monkeypatch.setattr(table, "INDEX", tmp_path / "index.yaml")
    monkeypatch.setattr(table, "ROOT", tmp_path.parent)
    with pytest.raises(SystemExit) as e:
        table.load_index()
    lines = str(e.value).splitlines()[1:]
    assert lines == ["  records/gone.json: named in the index but missing on disk",
                     "  records/b.json: status archive but not under archive/"]
