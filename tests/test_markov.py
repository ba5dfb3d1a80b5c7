"""Markov-chain data: the chains follow their tables, and the reference losses are right."""

import json
import os
import re
import runpy
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate
from scipy.special import betaln

from conrwkv.data import markov
from conrwkv.data.binidx import BinidxReader
from conrwkv.data.markov import (
    LN2,
    MarkovDataParams,
    add_beta_losses,
    bayes_sequence_loss,
    context_at,
    oracle_losses,
    reference_curves,
    sample_chains,
    write_markov_dataset,
)

ROOT = Path(__file__).resolve().parents[1]


def test_empirical_transitions_match_the_drawn_tables():
    rng = np.random.default_rng(1)
    x, tables = sample_chains(8, 20000, 2, 1.0, rng)
    for i in range(8):
        for c in range(4):
            ctx = np.array([context_at(x[i:i + 1], t, 2)[0] for t in range(2, 20000)])
            following = x[i, 2:][ctx == c]
            if len(following) > 500:
                se = np.sqrt(tables[i, c] * (1 - tables[i, c]) / len(following))
                assert abs(following.mean() - tables[i, c]) < 5 * se + 1e-3


def test_first_k_symbols_are_uniform_and_tables_differ_per_chain():
    rng = np.random.default_rng(2)
    x, tables = sample_chains(20000, 6, 3, 1.0, rng)
    assert abs(x[:, :3].mean() - 0.5) < 0.01
    assert tables.std(axis=0).min() > 0.2          # Beta(1, 1) has std 0.29
    shared, shared_tables = sample_chains(50, 10, 2, 1.0, rng, shared_table=[0.1, 0.2, 0.3, 0.4])
    assert np.all(shared_tables == [0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize("order,beta", [(1, 1.0), (2, 0.5), (3, 1.0)])
def test_beta_function_formula_equals_sequential_add_beta(order, beta):
    x, _ = sample_chains(50, 40, order, beta, np.random.default_rng(3))
    sequential = add_beta_losses(x, order, beta, first=order).sum(axis=1)
    np.testing.assert_allclose(bayes_sequence_loss(x, order, beta), sequential, rtol=1e-10)


def test_bayes_loss_equals_brute_force_marginal_likelihood():
    # -log P(x) under the prior, integrating each context's probability numerically.
    beta = 0.7
    for x in ([0, 1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 0], [0, 0, 1, 0, 0, 0, 1, 1]):
        x = np.array([x], dtype=np.uint8)
        log_marginal = 0.0
        for c in (0, 1):
            follows = [x[0, t] for t in range(1, x.shape[1]) if x[0, t - 1] == c]
            m, n = sum(follows), len(follows)
            value, _ = integrate.quad(lambda p, m=m, n=n: p**m * (1 - p)**(n - m)
                                      * p**(beta - 1) * (1 - p)**(beta - 1), 0, 1)
            log_marginal += np.log(value) - betaln(beta, beta)
        # order 1: x_0 is never predicted, so no ln 2 term ((k - 1) ln 2 = 0)
        assert bayes_sequence_loss(x, 1, beta)[0] == pytest.approx(-log_marginal, rel=1e-8)


@pytest.mark.parametrize("beta,order,bayes,oracle,lower", [
    (1.0, 1, 0.4902, 0.4813, [0.5684]),
    (0.5, 2, 0.3508, 0.3360, [0.5349, 0.4545]),
])
def test_expected_losses_match_spec_table(beta, order, bayes, oracle, lower):
    x, tables = sample_chains(6000, 513, order, beta, np.random.default_rng(11))
    curves = reference_curves(x, tables, order, beta)
    tol = 0.006                                    # ~3 standard errors at 6000 chains
    assert curves["bayes"].mean() == pytest.approx(bayes, abs=tol)
    assert curves["oracle"].mean() == pytest.approx(oracle, abs=tol)
    for j, value in enumerate(lower):
        assert curves[f"order_{j}"].mean() == pytest.approx(value, abs=tol)
    assert curves["oracle"].mean() < curves["bayes"].mean() < curves[f"order_{order - 1}"].mean()


def test_oracle_is_charged_ln2_before_the_first_context():
    x, tables = sample_chains(3, 10, 3, 1.0, np.random.default_rng(0))
    losses = oracle_losses(x, tables, 3)
    assert np.all(losses[:, :2] == LN2) and np.all(losses[:, 2:] != LN2)


def test_bad_orders_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="length 3 must exceed the order 3"):
        sample_chains(2, 3, 3, 1.0, rng)
    with pytest.raises(ValueError, match="order must be >= 1"):
        sample_chains(2, 10, 0, 1.0, rng)


def test_dataset_folder_is_deterministic_complete_and_guarded(tmp_path):
    params = MarkovDataParams(order=2, seq_len=33, n_train=300, n_val=40, seed=5)
    meta = write_markov_dataset(tmp_path / "a", params, progress=False)
    write_markov_dataset(tmp_path / "b", params, progress=False)
    for name in ("train.bin", "val.bin", "train.idx"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train, val = BinidxReader(tmp_path / "a" / "train"), BinidxReader(tmp_path / "a" / "val")
    assert len(train) == 300 and len(val) == 40 and set(np.unique(train.tokens)) <= {0, 1}
    assert np.all(train.sizes == 33)
    val_x = np.stack([val[i] for i in range(40)])
    assert meta["val"]["bayes_loss"] == pytest.approx(bayes_sequence_loss(val_x, 2, 1.0).mean() / 32)
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["params"]["order"] == 2
    # the val set does not depend on how many training chains were made
    write_markov_dataset(tmp_path / "c", MarkovDataParams(order=2, seq_len=33, n_train=100,
                                                          n_val=40, seed=5), progress=False)
    assert (tmp_path / "c" / "val.bin").read_bytes() == (tmp_path / "a" / "val.bin").read_bytes()
    # same parameters: reused as is; other parameters: refused, naming the difference
    assert write_markov_dataset(tmp_path / "a", params, progress=False) == meta
    with pytest.raises(ValueError, match=r"other parameters.*'order': \(2, 3\)"):
        write_markov_dataset(tmp_path / "a", MarkovDataParams(order=3, seq_len=33, n_train=300,
                                                              n_val=40, seed=5), progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not a datanew.py folder"):
        write_markov_dataset(tmp_path / "junk", params, progress=False)


def test_shared_table_warns_about_memorisation(tmp_path):
    params = MarkovDataParams(order=1, seq_len=9, n_train=10, n_val=5, shared_table=True)
    with pytest.warns(UserWarning, match="memorisation, not in-context learning"):
        write_markov_dataset(tmp_path / "s", params, progress=False)
    assert params.default_folder().name.endswith("-shared")


@pytest.mark.parametrize("flags,message", [
    (["--beta", "nan"], "--beta must be a positive finite number"),
    (["--beta", "inf"], "--beta must be a positive finite number"),
    (["--beta", "0"], "--beta must be a positive finite number"),
    (["--n-train", "0"], "--n-train must be at least 1 chain, got 0"),
    (["--n-val", "0"], "--n-val must be at least 1 chain, got 0"),
    (["--n-train", "-4"], "--n-train must be at least 1 chain, got -4"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--order", "0"], "--order must be between 1 and 16"),
    (["--order", "17"], "--order must be between 1 and 16"),
    (["--order", "4", "--seq-len", "4"], r"--seq-len \(4\) must exceed --order \(4\)"),
])
def test_bad_parameters_are_refused_before_anything_is_written(tmp_path, capsys, flags, message):
    out = tmp_path / "data" / "set"
    assert datanew_main([*flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("datanew.py: error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "data").exists()
    with pytest.raises(ValueError, match=message):        # the library refuses them too
        write_markov_dataset(out, MarkovDataParams(**_params_of(flags)), progress=False)
    assert not (tmp_path / "data").exists()


def _params_of(flags):
    values = dict(zip(flags[::2], flags[1::2]))
    return {flag[2:].replace("-", "_"): (float if flag == "--beta" else int)(value)
            for flag, value in values.items()}


def datanew_main(argv):
    return runpy.run_path(str(ROOT / "datanew.py"))["main"](argv)


def test_out_naming_a_file_and_a_malformed_meta_json_are_refused_by_name(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert datanew_main(["--n-train", "3", "--n-val", "2", "--out", str(tmp_path / "notes.txt")]) == 2
    assert f"--out {tmp_path / 'notes.txt'} is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"
    params = MarkovDataParams(seq_len=9, n_train=3, n_val=2)
    (tmp_path / "d").mkdir()                          # an empty folder is taken as new
    write_markov_dataset(tmp_path / "d", params, progress=False)
    meta = tmp_path / "d" / "meta.json"
    for text, message in (('{"format": "conrwkv-markov-v1", "par', "is not valid JSON"),
                          ('{"format": "conrwkv-markov-v1"}', r"lacks the keys \['params', 'val'\]")):
        meta.write_text(text)
        with pytest.raises(ValueError, match=rf"{re.escape(str(meta))}: Markov data meta.json {message}"):
            write_markov_dataset(tmp_path / "d", params, progress=False)


def test_a_failed_generation_leaves_no_folder(tmp_path, monkeypatch):
    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(markov, "reference_curves", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_markov_dataset(tmp_path / "d", MarkovDataParams(seq_len=9, n_train=3, n_val=2), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.lock"]


def _writing_train_bin(partial: Path) -> bool:
    try:
        return any(p.stat().st_size > 0 for p in partial.glob(".train.bin.*"))
    except OSError:                # renamed or deleted between the listing and the stat
        return False


def test_a_killed_run_leaves_nothing_in_the_way_of_two_reruns_at_once(tmp_path):
    # Big enough that generation takes about half a second, so the kill lands in its middle.
    flags = ["--order", "2", "--seq-len", "257", "--n-train", "60000", "--n-val", "8", "--seed", "3"]
    out = tmp_path / "data" / "k2"
    partial = out.parent / ".k2.partial"
    command = [sys.executable, str(ROOT / "datanew.py"), *flags, "--out", str(out)]
    victim = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not _writing_train_bin(partial) and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.kill()                                      # SIGKILL: no cleanup code runs
    victim.wait()
    assert victim.returncode == -9 and partial.is_dir() and not out.exists()

    reruns = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    for rerun in reruns:
        _, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, err
    assert sorted(os.listdir(out.parent)) == [".k2.lock", "k2"]

    reference = write_markov_dataset(tmp_path / "reference", MarkovDataParams(
        order=2, seq_len=257, n_train=60000, n_val=8, seed=3), progress=False)
    assert json.loads((out / "meta.json").read_text()) == reference
    names = sorted(os.listdir(out))
    assert names == sorted(os.listdir(tmp_path / "reference")) and len(names) == 6
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
