"""ASR ablation table: rows from run folders laid out as training (asr-step<N>.pth + .json sidecar)
and `--op eval` (eval-asr-step<N>-beam<B>-tps<T>/summary.json) write them, the markdown table,
and the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conrwkv.asr.ablation import format_table, main, run_row
from conrwkv.eval.wer import score_all, split_summary
from conrwkv.io import atomic_json_save
from conrwkv.train.step_files import weights_path

REFS = ["the cat sat on the mat", "and so on", "northanger abbey"]


def fake_run(folder: Path, step: int, train_seconds: float | None, hyps: dict[str, list[str]],
             beam: int = 4, eval_step: int | None = None) -> Path:
    """A run folder: the weights and sidecar of `step` as StepCheckpoint writes them, and the
    summary of `eval_step` (default: the same step) as run_asr.eval_asr writes it."""
    weights = weights_path(folder, "asr", step)
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"weights")
    sidecar = {"step": step, "metrics": {"train/loss": 1.5}, "task": "asr"}
    if train_seconds is not None:              # sidecars written before train_seconds existed lack it
        sidecar["train_seconds"] = train_seconds
    atomic_json_save(sidecar, weights.with_suffix(".json"))
    evaluated = weights_path(folder, "asr", step if eval_step is None else eval_step)
    splits = {name: {**split_summary(score_all(REFS, h)), "audio_s": 9.0, "decode_s": 0.5 + i}
              for i, (name, h) in enumerate(hyps.items())}
    atomic_json_save({"weights": str(evaluated), "beam": beam, "splits": splits},
                     folder / f"eval-{evaluated.stem}-beam{beam}-tps8" / "summary.json")
    return folder


@pytest.fixture
def runs(tmp_path):
    state = fake_run(tmp_path / "state", 12, 30.4,
                     {"test-clean": ["the cat sat on a mat", "and so on", "northanger abbey"],
                      "test-other": ["cat sat on the mat", "and so", "abbey"]})
    # an older checkpoint of the same run is ignored: the table shows the latest weights
    weights_path(state, "asr", 6).write_bytes(b"old")
    conv = fake_run(tmp_path / "conv", 20, None,
                    {"test-clean": ["the cat sat on the mat", "and so on", "northanger abbey x"]}, beam=1)
    return state, conv


def test_run_row_reads_the_latest_weights(runs):
    state, conv = runs
    row = run_row("+ state", state)
    assert row["label"] == "+ state" and row["folder"] == str(state)
    assert row["weights"] == str(state / "asr-step000012.pth")
    assert (row["step"], row["train_seconds"], row["beam"]) == (12, 30.4, 4)
    assert row["eval"] == str(state / "eval-asr-step000012-beam4-tps8")
    assert row["splits"] == {
        "test-clean": {"wer": pytest.approx(1 / 11), "wer_whisper_normalizer": pytest.approx(1 / 11),
                       "utterances": 3, "words": 11, "decode_seconds": 0.5},
        "test-other": {"wer": pytest.approx(3 / 11), "wer_whisper_normalizer": pytest.approx(3 / 11),
                       "utterances": 3, "words": 11, "decode_seconds": 1.5}}
    assert run_row("conv", conv)["train_seconds"] is None


def test_format_table(runs):
    state, conv = runs
    table = format_table([run_row("+ state", state), run_row("state + conv (k=3)", conv)])
    assert table.splitlines() == [
        "| configuration | steps | train (s) | WER test-clean (%) | WER test-other (%) | beam |",
        "|---|---|---|---|---|---|",
        "| + state | 12 | 30 | 9.09 | 27.27 | 4 |",
        "| state + conv (k=3) | 20 |  | 9.09 |  | 1 |",
    ]


def test_missing_files_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"run 'a': no asr-step\*.pth in .*empty"):
        run_row("a", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no asr-step"):
        run_row("a", tmp_path / "does-not-exist")
    stale = fake_run(tmp_path / "stale", 8, 1.0, {"dev": REFS}, eval_step=4)   # step 8 not evaluated
    missing = r"no eval-asr-step000008\*/summary.json in .*stale \(written by train.py --op eval\)"
    with pytest.raises(FileNotFoundError, match=missing):
        run_row("b", stale)
    run = fake_run(tmp_path / "run", 2, 1.0, {"dev": REFS})
    (run / "asr-step000002.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"asr-step000002.json is missing \(written by training\)"):
        run_row("c", run)


def test_several_evaluations_of_the_weights_use_the_newest_and_say_so(tmp_path, capsys):
    run = fake_run(tmp_path / "run", 5, 2.0, {"dev": ["the cat", "and so on", "northanger abbey"]}, beam=1)
    later = fake_run(tmp_path / "later", 5, 2.0, {"dev": REFS}, beam=4)
    newer = run / "eval-asr-step000005-beam4-tps8"
    newer.mkdir()
    (newer / "summary.json").write_bytes(
        (later / "eval-asr-step000005-beam4-tps8" / "summary.json").read_bytes())
    os.utime(newer / "summary.json", (2e9, 2e9))
    (run / "eval-asr-step000050-beam1-tps8").mkdir()                # another step's: not a candidate
    row = run_row("r", run)
    assert row["eval"] == str(newer) and row["beam"] == 4 and row["splits"]["dev"]["wer"] == 0.0
    err = capsys.readouterr().err
    assert "2 evaluations of asr-step000005.pth; using the newest, eval-asr-step000005-beam4-tps8" in err
    assert "others: eval-asr-step000005-beam1-tps8" in err


def test_command_line_splits_at_the_last_equals_sign(runs, tmp_path, capsys):
    state, conv = runs
    out = tmp_path / "table" / "ablation.json"
    assert main(["--run", f"+ state={state}", "--run", f"state + conv (k=3)={conv}", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| state + conv (k=3) | 20 |  | 9.09 |  | 1 |" in printed
    assert "| + state | 12 | 30 |" in printed
    rows = json.loads(out.read_text())["runs"]
    assert [r["label"] for r in rows] == ["+ state", "state + conv (k=3)"]
    assert rows[1]["folder"] == str(conv) and rows[0]["splits"]["test-other"]["words"] == 11


@pytest.mark.parametrize("spec", ["no-equals-sign", "=folder", "label="])
def test_malformed_run_is_an_error(spec, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--run", spec])
    assert exit_info.value.code == 2
    assert f"--run {spec!r} is not LABEL=FOLDER" in capsys.readouterr().err


def test_run_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2 and "--run" in capsys.readouterr().err
