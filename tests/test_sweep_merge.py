"""conrwkv.lm.sweep_merge: sweeps run in parts (seeds or depths in different GPU calls) give the
one table the whole sweep would have given, from their sweep.json files or the tabulations kept
in docs/; parts of different settings, or one run with two results, are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conrwkv.lm.sweep import make_table
from conrwkv.lm.sweep_merge import main

ROOT = Path(__file__).resolve().parents[1]
KEPT = ROOT / "docs" / "icl-x070.json"          # a real tabulation: 144 runs, seeds 0-2


def split_by_seed(tmp_path: Path) -> tuple[dict, list[Path]]:
    whole = json.loads(KEPT.read_text())
    paths = []
    for seed in whole["args"]["seeds"]:
        part = {**whole, "args": {**whole["args"], "seeds": [seed], "parallel": 6 - seed},
                "runs": [r for r in whole["runs"] if r["seed"] == seed]}
        paths.append(tmp_path / f"part{seed}" / "sweep.json")
        paths[-1].parent.mkdir()
        paths[-1].write_text(json.dumps(part))
    return whole, paths


def test_two_parts_give_the_whole_sweeps_table_and_figures(tmp_path, capsys):
    whole, paths = split_by_seed(tmp_path)
    assert main([str(p) for p in paths] + ["--out", str(tmp_path / "all")]) == 0
    merged = json.loads((tmp_path / "all" / "sweep.json").read_text())
    assert merged["args"]["seeds"] == [0, 1, 2] and len(merged["runs"]) == len(whole["runs"]) == 144
    table = make_table(whole["runs"], [0, 2, 3, 4, 5, 6])
    assert (tmp_path / "all" / "sweep.md").read_text().strip() == table
    assert "± " in capsys.readouterr().out                     # three seeds: mean ± spread
    for figure in ("sweep.png", "curves.png"):
        assert (tmp_path / "all" / figure).read_bytes()[:4] == b"\x89PNG"
    assert merged["runs"][0]["curve"][0].keys() == {"step", "gap"}


def test_a_run_in_two_parts_with_the_same_result_is_kept_once(tmp_path):
    _, paths = split_by_seed(tmp_path)
    assert main([str(paths[0]), *map(str, paths), "--out", str(tmp_path / "all")]) == 0
    assert len(json.loads((tmp_path / "all" / "sweep.json").read_text())["runs"]) == 144


def test_parts_of_different_settings_are_refused_naming_the_file_and_flag(tmp_path, capsys):
    _, paths = split_by_seed(tmp_path)
    part = json.loads(paths[1].read_text())
    part["args"]["steps"] = 6000
    paths[1].write_text(json.dumps(part))
    assert main([str(p) for p in paths] + ["--out", str(tmp_path / "all")]) == 2
    err = capsys.readouterr().err
    assert str(paths[1]) in err and "--steps is 6000" in err and "Traceback" not in err
    assert not (tmp_path / "all").exists()


def test_one_run_with_two_results_is_refused(tmp_path, capsys):
    _, paths = split_by_seed(tmp_path)
    part = json.loads(paths[1].read_text())
    first = json.loads(paths[0].read_text())["runs"][0]
    part["runs"].append({**first, "gap": first["gap"] + 0.01})
    paths[1].write_text(json.dumps(part))
    assert main([str(p) for p in paths] + ["--out", str(tmp_path / "all")]) == 2
    assert "run k1-conv0-L1-s0 is also in an earlier part" in capsys.readouterr().err


def test_an_existing_merged_table_is_not_overwritten(tmp_path):
    _, paths = split_by_seed(tmp_path)
    (tmp_path / "all").mkdir()
    (tmp_path / "all" / "sweep.json").write_text("{}")
    with pytest.raises(SystemExit) as stop:
        main([str(p) for p in paths] + ["--out", str(tmp_path / "all")])
    assert stop.value.code == 2 and (tmp_path / "all" / "sweep.json").read_text() == "{}"


def test_a_missing_part_is_named(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere.json"), "--out", str(tmp_path / "all")]) == 2
    assert "nowhere.json does not exist" in capsys.readouterr().err


def test_a_part_that_is_not_a_sweeps_record_is_named(tmp_path, capsys):
    _, paths = split_by_seed(tmp_path)
    part = json.loads(paths[1].read_text())
    del part["runs"][3]["gap"]
    paths[1].write_text(json.dumps(part))
    assert main([str(p) for p in paths] + ["--out", str(tmp_path / "all")]) == 2
    err = capsys.readouterr().err
    assert str(paths[1]) in err and "a run without gap" in err
