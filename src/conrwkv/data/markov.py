"""Binary k-th order Markov chains with per-sequence transition tables, and their reference losses.

The in-context learning task of Edelman et al. 2024 ("The Evolution of Statistical Induction
Heads") and Bondaschi et al. 2025 (k-th order): each sequence draws its own table, one
P(next = 1 | context) ~ Beta(beta, beta) per context of k symbols (Dirichlet(beta) over the two
outcomes); the first k symbols are uniform. A model can only predict well by estimating the
table from the sequence itself. docs/reference.md, "Markov ICL".

Conventions. A sequence of `length` tokens gives length - 1 predictions (of x_1 .. x_{L-1}).
The context of x_t is x_{t-k} .. x_{t-1}, as an integer with the most recent symbol in bit 0.
Positions 1 .. k-1 hold uniform symbols that no context predicts; every reference predictor
is charged ln 2 there. From position k on:
- Bayes-optimal: P(1) = (m_c + beta) / (n_c + 2 beta), n_c earlier occurrences of context c
  (at positions >= k), m_c of them followed by 1. Its exact total log-loss of a sequence is
  (k-1) ln 2 + sum_c [ln B(beta, beta) - ln B(m_c + beta, n_c - m_c + beta)].
- oracle: the true table (the loss floor no in-context learner can beat on average);
- order-j estimators, j < k: the same add-beta rule on contexts of the last j symbols only,
  counting every earlier position >= j: what a model that sees only the last j + 1 tokens
  can reach.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import shutil
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.special import betaln
from tqdm.auto import tqdm

from ..io import atomic_json_save, atomic_write_bytes, read_json
from .binidx import write_binidx

LN2 = float(np.log(2.0))
log = logging.getLogger(__name__)


def sample_chains(n: int, length: int, order: int, beta: float, rng: np.random.Generator,
                  shared_table: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n chains of `length` symbols. Returns (symbols uint8 [n, length], tables [n, 2**order]),
    tables[i, c] = P(next = 1 | context c) for chain i."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    if length <= order:
        raise ValueError(f"sequence length {length} must exceed the order {order}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    n_ctx = 2**order
    if shared_table is None:
        tables = rng.beta(beta, beta, size=(n, n_ctx))
    else:
        tables = np.broadcast_to(np.asarray(shared_table, dtype=np.float64), (n, n_ctx)).copy()
    x = np.empty((n, length), dtype=np.uint8)
    x[:, :order] = rng.integers(0, 2, size=(n, order))
    ctx = context_at(x, order, order)
    rows = np.arange(n)
    for t in range(order, length):
        x[:, t] = rng.random(n) < tables[rows, ctx]
        ctx = ((ctx << 1) | x[:, t]) & (n_ctx - 1)
    return x, tables


def context_at(x: np.ndarray, t: int, j: int) -> np.ndarray:
    """Context index of position t over the last j symbols (most recent in bit 0): [n]."""
    ctx = np.zeros(x.shape[0], dtype=np.int64)
    for i in range(1, j + 1):
        ctx |= x[:, t - i].astype(np.int64) << (i - 1)
    return ctx


def add_beta_losses(x: np.ndarray, j: int, beta: float, first: int) -> np.ndarray:
    """Per-position log-loss [n, L-1] of the add-beta predictor on contexts of j symbols.

    Predictions start at position `first` (>= j); earlier positions are charged ln 2. Counts
    include every position >= j seen so far (for the Bayes predictor j = k = first)."""
    n, L = x.shape
    n_ctx = 2**j
    ones = np.zeros((n, n_ctx))
    seen = np.zeros((n, n_ctx))
    rows = np.arange(n)
    losses = np.full((n, L - 1), LN2)
    for t in range(j, L):
        c = context_at(x, t, j)
        if t >= first:
            p1 = (ones[rows, c] + beta) / (seen[rows, c] + 2 * beta)
            losses[:, t - 1] = -np.log(np.where(x[:, t] == 1, p1, 1 - p1))
        ones[rows, c] += x[:, t]
        seen[rows, c] += 1
    return losses


def oracle_losses(x: np.ndarray, tables: np.ndarray, order: int) -> np.ndarray:
    """Per-position log-loss [n, L-1] of the true transition table."""
    n, L = x.shape
    losses = np.full((n, L - 1), LN2)
    rows = np.arange(n)
    for t in range(order, L):
        p1 = tables[rows, context_at(x, t, order)]
        losses[:, t - 1] = -np.log(np.where(x[:, t] == 1, p1, 1 - p1))
    return losses


def bayes_sequence_loss(x: np.ndarray, order: int, beta: float) -> np.ndarray:
    """Exact total Bayes-optimal log-loss of each sequence [n], by the Beta-function formula."""
    n, L = x.shape
    ones = np.zeros((n, 2**order))
    seen = np.zeros((n, 2**order))
    rows = np.arange(n)
    for t in range(order, L):
        c = context_at(x, t, order)
        ones[rows, c] += x[:, t]
        seen[rows, c] += 1
    per_context = betaln(beta, beta) - betaln(ones + beta, seen - ones + beta)
    return (order - 1) * LN2 + per_context.sum(axis=1)


def reference_curves(x: np.ndarray, tables: np.ndarray, order: int, beta: float) -> dict[str, np.ndarray]:
    """Mean loss by predicted position [L-1] of every reference predictor, keyed by name:
    'bayes', 'oracle', 'order_0' .. 'order_{k-1}'."""
    curves = {"bayes": add_beta_losses(x, order, beta, first=order).mean(0),
              "oracle": oracle_losses(x, tables, order).mean(0)}
    for j in range(order):
        curves[f"order_{j}"] = add_beta_losses(x, j, beta, first=order).mean(0)
    return curves


# ---------------------------------------------------------------------------- dataset folders
FORMAT = "conrwkv-markov-v1"
CHUNK = 4096          # chains generated per step of the progress bar
# A chain's table has 2**order entries: at order 16 one step of CHUNK chains holds 2 GiB of them.
MAX_ORDER = 16
DATA_FILES = ("train.bin", "train.idx", "val.bin", "val.idx", "val_curves.npz")
META_KEYS = ("format", "params", "val")


@dataclass(frozen=True)
class MarkovDataParams:
    order: int = 1
    beta: float = 1.0
    seq_len: int = 513
    n_train: int = 20000
    n_val: int = 1000
    seed: int = 0
    shared_table: bool = False

    def default_folder(self, root: str | Path = "data/markov-binidx") -> Path:
        """A folder named by every parameter, so that other parameters never meet old data."""
        shared = "-shared" if self.shared_table else ""
        return Path(root) / (f"k{self.order}-beta{self.beta:g}-len{self.seq_len}-"
                             f"train{self.n_train}-val{self.n_val}-seed{self.seed}{shared}")

    def validate(self) -> None:
        """Refuse parameters that cannot make a data set, naming datanew.py's flag for each."""
        if not 1 <= self.order <= MAX_ORDER:
            raise ValueError(f"--order must be between 1 and {MAX_ORDER} (a chain's transition "
                             f"table has 2**order entries), got {self.order}")
        if self.seq_len <= self.order:
            raise ValueError(f"--seq-len ({self.seq_len}) must exceed --order ({self.order})")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"--beta must be a positive finite number (the Beta(beta, beta) "
                             f"prior), got {self.beta}")
        for flag, count in (("--n-train", self.n_train), ("--n-val", self.n_val)):
            if count < 1:
                raise ValueError(f"{flag} must be at least 1 chain, got {count}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0 (numpy seeds are non-negative), got {self.seed}")


def check_folder(out: Path, params: MarkovDataParams) -> bool:
    """True when `out` already holds this data set; raise when it holds anything else."""
    meta_path = out / "meta.json"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose another --out")
    if meta_path.is_file():
        meta = read_json(meta_path, "Markov data meta.json", META_KEYS)
        made_with = meta["params"] if isinstance(meta["params"], dict) else {}
        wanted = asdict(params)
        if meta["format"] != FORMAT or made_with != wanted:
            diff = {k: (made_with.get(k), v) for k, v in wanted.items() if made_with.get(k) != v}
            raise ValueError(f"{out} holds Markov data made with other parameters "
                             f"(parameter: (in the folder, asked now)) {diff}; choose another "
                             f"--out (the default folder is named by the parameters)")
        missing = [name for name in DATA_FILES if not (out / name).is_file()]
        if missing:
            raise ValueError(f"{out}: meta.json is there but {missing} are missing; the folder is "
                             f"incomplete: delete it or choose another --out")
        return True
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists, is not empty, and has no meta.json: it is not a "
                         f"datanew.py folder (or one an older datanew.py left half-written); "
                         f"delete it or choose another --out")
    return False


def write_markov_dataset(out: str | Path, params: MarkovDataParams, progress: bool = True) -> dict:
    """Generate train and val chains into `out` (binidx + meta.json + val_curves.npz).

    Deterministic for params.seed; train and val use independent streams, so the val set does
    not depend on n_train. Returns the meta dict; does nothing if `out` already holds this set.

    `out` never holds part of a data set: the files are written into the sibling folder
    `.<name>.partial`, which is renamed to `out` when complete. A partial folder left by a killed
    run is deleted by the next one. Processes making the same folder at once take turns on the
    lock file `.<name>.lock`: the first generates, the others then find the finished folder."""
    out = Path(out)
    params.validate()
    if check_folder(out, params):
        return read_json(out / "meta.json", "Markov data meta.json", META_KEYS)
    target = Path(os.path.abspath(out))         # ".." resolved, so that siblings have a name
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{target.name}.lock", out):
        if check_folder(out, params):           # finished by another process while we waited
            return read_json(out / "meta.json", "Markov data meta.json", META_KEYS)
        partial = target.parent / f".{target.name}.partial"
        # Holding the lock, no live process writes `partial`: any found is a killed run's.
        shutil.rmtree(partial, ignore_errors=True)
        try:
            meta = _generate(partial, params, progress)
            os.replace(partial, target)         # onto nothing or an empty folder: atomic
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return meta


@contextmanager
def _exclusive(lock_path: Path, out: Path) -> Iterator[None]:
    """Hold an flock on `lock_path` (released by the kernel if the process dies). The lock file
    stays: deleting it could let two processes lock two different files of the same name."""
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another process that is generating %s", out)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _generate(out: Path, params: MarkovDataParams, progress: bool) -> dict:
    """Write the whole data set into the new folder `out`; meta.json last."""
    if params.shared_table:
        warnings.warn("--shared-table: every chain uses ONE transition table. A model can then "
                      "memorise that table in its weights: this tests memorisation, not "
                      "in-context learning.", stacklevel=3)
    out.mkdir()
    table_rng = np.random.default_rng([params.seed, 2])
    shared = table_rng.beta(params.beta, params.beta, size=2**params.order) if params.shared_table else None

    def chains(n: int, stream: int, label: str):
        rng = np.random.default_rng([params.seed, stream])
        bar = tqdm(total=n, desc=f"{label} chains", unit="chain", disable=not progress)
        for start in range(0, n, CHUNK):
            x, tables = sample_chains(min(CHUNK, n - start), params.seq_len, params.order,
                                      params.beta, rng, shared)
            bar.update(len(x))
            yield x, tables
        bar.close()

    write_binidx(out / "train", (row for x, _ in chains(params.n_train, 0, "train") for row in x),
                 vocab_size=2)
    val_x, val_tables = map(np.concatenate, zip(*chains(params.n_val, 1, "val")))
    write_binidx(out / "val", val_x, vocab_size=2)

    curves = reference_curves(val_x, val_tables, params.order, params.beta)
    bayes_by_position = add_beta_losses(val_x, params.order, params.beta, first=params.order)
    exact = bayes_sequence_loss(val_x, params.order, params.beta) / (params.seq_len - 1)
    save_npz(out / "val_curves.npz", {"bayes_by_sequence": bayes_by_position.astype(np.float32),
                                      **curves})
    meta = {
        "format": FORMAT,
        "params": asdict(params),
        "vocab_size": 2,
        "predictions_per_sequence": params.seq_len - 1,
        "val": {
            "bayes_loss": float(exact.mean()),
            "oracle_loss": float(curves["oracle"].mean()),
            "lower_order_loss": {f"order_{j}": float(curves[f"order_{j}"].mean())
                                 for j in range(params.order)},
            "uniform_loss": LN2,
        },
        "note": "val losses in nats per predicted token, averaged over positions 1..seq_len-1; "
                "val_curves.npz holds them by position and the Bayes loss per sequence and "
                "position",
    }
    atomic_json_save(meta, out / "meta.json")       # written last: its presence means complete
    return meta


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """What np.savez_compressed writes, but the same bytes for the same arrays: numpy stamps each
    member with the current time, so two runs of one data set would differ."""
    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, array in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)

    atomic_write_bytes(path, write)
