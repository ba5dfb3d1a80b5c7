"""The ASR grid driver (asr/grid.py) end to end on CPU with tiny models: cells trained and scored
in order, a later call keeping what is done and going on, a budget that stops a call inside a
run, the dry run, the summary folders (never replaced), and bad arguments named."""

from __future__ import annotations

import json

import pytest
from speech_fixtures import make_librispeech

from conrwkv.asr import grid
from conrwkv.asr.tiny_models import make_tiny_encoder, make_tiny_llm

TRAIN_ARGS = ("--max_steps 2 --micro_bsz 2 --warmup_steps 0 --accelerator cpu --devices 1 "
              "--projector_hidden 32 --save_every 1")
EVAL_ARGS = "--beam 1 --micro_bsz 4 --accelerator cpu --max_tokens_per_second 2"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    for split in ("train", "dev", "test-clean", "test-other"):
        make_librispeech(root, split)
    encoder = make_tiny_encoder(root / "encoder")
    llm = make_tiny_llm(root / "llm.pth", n_layer=1, n_embd=32)
    return dict(corpus=str(root / "LibriSpeech"), encoder=str(encoder), llm=str(llm), root=root)


def call(setup, out, arms, *extra):
    return grid.main(["--lm", f"tiny={setup['llm']}", "--encoder", setup["encoder"],
                      "--corpus", setup["corpus"], "--arms", arms, "--out", str(out),
                      "--train_args", TRAIN_ARGS, "--eval_args", EVAL_ARGS, *extra])


def test_cells_are_kept_resumed_and_summarised(setup, tmp_path, capsys):
    out = tmp_path / "grid"
    assert call(setup, out, "projector") == 0
    first = out / "tiny" / "projector" / "seed0"
    assert grid.cell_status(first) == "done"
    evaluations = sorted(p.name for p in first.glob("eval-*"))
    capsys.readouterr()

    assert call(setup, out, "projector,state") == 0           # a later call with one more arm
    printed = capsys.readouterr().out
    assert "[1/2] tiny projector seed0: done, kept" in printed
    assert sorted(p.name for p in first.glob("eval-*")) == evaluations    # not scored again
    assert grid.cell_status(out / "tiny" / "state" / "seed0") == "done"
    # one summary per call, the earlier one left as it was
    assert json.loads((out / "summary" / "grid.json").read_text())["cells"] == 1
    rows = json.loads((out / "summary-2" / "grid.json").read_text())["rows"]
    assert [(r["arm"], r["step"], r["lm"]) for r in rows] == [("projector", 2, "tiny"), ("state", 2, "tiny")]
    assert rows[0]["lm_parameters"] == grid.parameter_count(grid.Path(setup["llm"])) > 0
    assert set(rows[0]["splits"]) == {"test-clean", "test-other"}
    table = (out / "summary-2" / "grid.md").read_text()
    assert "2 of 2 cells evaluated." in table and "| tiny |" in table and "projector + state |" in table
    assert (out / "summary-2" / "grid.png").stat().st_size > 0

    # a budget that ends the call inside a training: the cell stays unfinished, and says so
    assert call(setup, out, "projector,state,state-conv", "--budget_s", "2.5") == 0
    printed = capsys.readouterr().out
    assert "stopped by --budget_s during train" in printed and "1 of 3 cells not done" in printed
    assert grid.cell_status(out / "tiny" / "state-conv-k3" / "seed0") in ("new", "training")
    assert call(setup, out, "projector,state,state-conv", "--dry_run") == 0
    printed = capsys.readouterr().out
    assert "[3/3] tiny state-conv-k3 seed0: " in printed and "--conv_kernel 3" in printed
    assert "[1/3] tiny projector seed0: done" in printed


def test_bad_arguments_are_named(setup, tmp_path, capsys):
    assert grid.main(["--lm", "tiny", "--encoder", "e", "--corpus", "c", "--out", str(tmp_path)]) == 2
    assert "--lm 'tiny' is not LABEL=PATH" in capsys.readouterr().err
    assert grid.main(["--lm", f"a={tmp_path / 'none.pth'}", "--encoder", "e", "--corpus", "c",
                      "--out", str(tmp_path)]) == 2
    assert "none.pth does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        grid.main(["--lm", f"a={setup['llm']}", "--encoder", "e", "--corpus", "c", "--out",
                   str(tmp_path), "--arms", "state,prompt"])
    assert "--arms: unknown prompt; choose from projector, state" in capsys.readouterr().err
    for flag, value, message in (("--conv_kernels", "5,x", "is not a comma-separated list"),
                                 ("--conv_kernels", "0", "every kernel must be at least 1"),
                                 ("--parallel", "0", "--parallel 0: at least 1")):
        with pytest.raises(SystemExit):
            grid.main(["--lm", f"a={setup['llm']}", "--encoder", "e", "--corpus", "c", "--out",
                       str(tmp_path), flag, value])
        assert message in capsys.readouterr().err
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="damaged.pth is not a readable .pth"):
        grid.parameter_count(damaged)


@pytest.mark.parametrize("arm", list(grid.ARMS))
def test_every_arm_is_a_training_the_cli_accepts(setup, tmp_path, arm, capsys):
    from conrwkv import cli

    args = grid.parse_args(["--lm", f"tiny={setup['llm']}", "--encoder", setup["encoder"],
                            "--corpus", setup["corpus"], "--arms", arm, "--out", str(tmp_path),
                            "--train_args", TRAIN_ARGS])
    kernel = 3 if arm == grid.CONV_ARM else 0
    train, evaluate = grid.commands(grid.Cell("tiny", grid.Path(setup["llm"]), arm, 3, kernel), args)
    assert train[1:3] == ["-m", "conrwkv"] and evaluate[1:3] == ["-m", "conrwkv"]
    assert cli.main([*train[3:], "--dry_run"]) == 0
    flags = json.loads(capsys.readouterr().out)["flags"]
    assert flags["train"]["seed"] == 3
    expected = {"projector": ("train_state", False), "state": ("train_state", True),
                "state-conv": ("conv_kernel", 3), "lora": ("llm_train", "lora"),
                "full": ("llm_train", "full"), "oracle": ("oracle_prefix", True)}[arm]
    section = "model" if expected[0] == "conv_kernel" else "asr"
    assert flags[section][expected[0]] == expected[1]


def test_cells_go_seed_by_seed_with_one_conv_cell_per_kernel():
    lms = [("small", grid.Path("a.pth")), ("large", grid.Path("b.pth"))]
    cells = grid.grid_cells(lms, ["projector", "state-conv"], [0, 1], [5, 3])
    assert [(c.seed, c.lm_label, c.variant) for c in cells] == [
        (0, "small", "projector"), (0, "small", "state-conv-k5"), (0, "small", "state-conv-k3"),
        (0, "large", "projector"), (0, "large", "state-conv-k5"), (0, "large", "state-conv-k3"),
        (1, "small", "projector"), (1, "small", "state-conv-k5"), (1, "small", "state-conv-k3"),
        (1, "large", "projector"), (1, "large", "state-conv-k5"), (1, "large", "state-conv-k3")]
    assert cells[1].flags() == ["--conv_kernel", "5"] and cells[0].flags() == ["--no-train_state"]
    assert grid.arm_label("state-conv", 5) == "projector + state + conv (k=5)"


def test_parallel_cells_all_finish_and_a_failing_cell_does_not_stop_the_others(setup, tmp_path, capsys):
    out = tmp_path / "grid"
    # two kernels, two seeds: four cells, two at a time
    assert call(setup, out, "state-conv", "--conv_kernels", "2,3", "--seeds", "0,1",
                "--parallel", "2") == 0
    for kernel in (2, 3):
        for seed in (0, 1):
            assert grid.cell_status(out / "tiny" / f"state-conv-k{kernel}" / f"seed{seed}") == "done"
    table = (out / "summary" / "grid.md").read_text()
    assert "4 of 4 cells evaluated." in table and "conv (k=2)" in table and "conv (k=3)" in table
    capsys.readouterr()
    # a cell whose training is refused (an unknown LoRA target) fails; the other cell still runs
    assert call(setup, tmp_path / "grid2", "lora,projector", "--parallel", "2",
                "--train_args", TRAIN_ARGS + " --lora_targets no_such_module") == 1
    err = capsys.readouterr().err
    assert "tiny lora seed0: train exited" in err and "1 cell(s) failed" in err
    assert grid.cell_status(tmp_path / "grid2" / "tiny" / "projector" / "seed0") == "done"


def test_no_cell_starts_on_a_disk_that_is_nearly_full(setup, tmp_path, capsys):
    out = tmp_path / "grid"
    assert call(setup, out, "projector", "--min_free_gib", "1e9") == 0
    printed = capsys.readouterr().out
    assert "not started" in printed and "below --min_free_gib 1e+09" in printed
    assert grid.cell_status(out / "tiny" / "projector" / "seed0") == "new"
    free_here = grid.free_disk_gib(tmp_path)
    assert 0 < grid.free_disk_gib(out / "not" / "made") == pytest.approx(free_here, rel=0.1)
