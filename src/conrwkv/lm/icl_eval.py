"""In-context learning evaluation on Markov-chain data: the model's loss against the
Bayes-optimal in-context estimator, by position, with a plot.

The references come from the datanew.py folder (val_curves.npz): the Bayes-optimal loss of every
validation chain at every position, and the mean curves of the oracle (true table) and of the
lower-order add-beta estimators (docs/reference.md, "Markov ICL"). The model is scored on the same
chains and positions, so `gap = loss - bayes` is exact, not an estimate from different samples. A
chain of seq_len tokens has seq_len - 1 predictions; a ctx_len longer than that is cut to it.

The JSON and PNG of an evaluation are never written over an earlier evaluation's: a re-run
gets `-icl-2.json` / `-icl-2.png`, and so on (eval/fresh_names.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.binidx import BinidxReader
from ..data.markov import META_KEYS
from ..data.sampling import DocumentDataset
from ..eval.fresh_names import new_files
from ..io import atomic_json_save, atomic_write_bytes, read_json


@torch.no_grad()
def model_losses_by_position(model, data_dir: str | Path, ctx_len: int, batch_size: int = 64,
                             device: str | torch.device = "cpu") -> np.ndarray:
    """Per-chain, per-position cross-entropy [n_val, T] of `model` on the folder's val chains."""
    dataset = DocumentDataset(BinidxReader(Path(data_dir) / "val"), ctx_len)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    model.eval()
    rows = []
    for batch in loader:
        logits, _ = model(batch["input"].to(device))
        losses = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2),
                                                   batch["target"].to(device), reduction="none")
        rows.append(torch.where(batch["mask"].to(device), losses, torch.nan).cpu().numpy())
    return np.concatenate(rows)


def predictions_per_chain(data_dir: str | Path) -> int:
    """Positions per validation chain that have a reference loss (seq_len - 1)."""
    with np.load(Path(data_dir) / "val_curves.npz") as refs:
        return int(refs["bayes_by_sequence"].shape[1])


def icl_summary(model_losses: np.ndarray, data_dir: str | Path) -> dict:
    """Mean losses over the positions the model predicted, against every reference."""
    data_dir = Path(data_dir)
    meta = read_json(data_dir / "meta.json", "Markov data meta.json", META_KEYS)
    refs = np.load(data_dir / "val_curves.npz")
    T = model_losses.shape[1]
    if T > refs["bayes_by_sequence"].shape[1]:
        raise ValueError(f"{data_dir}: the model losses cover {T} positions, but the chains have "
                         f"only {refs['bayes_by_sequence'].shape[1]} predictions each")
    bayes_rows = refs["bayes_by_sequence"][: len(model_losses), :T].astype(np.float64)
    valid = ~np.isnan(model_losses)
    by_position = {"model": np.nanmean(model_losses, axis=0), "bayes": bayes_rows.mean(axis=0)}
    for name in refs.files:
        if name != "bayes_by_sequence" and name != "bayes":
            by_position[name] = refs[name][:T]
    loss = float(model_losses[valid].mean())
    bayes = float(bayes_rows[valid].mean())
    order = meta["params"]["order"]
    summary = {
        "loss": loss, "bayes": bayes, "gap": loss - bayes,
        "oracle": float(by_position["oracle"].mean()),
        "lower_order": {f"order_{j}": float(by_position[f"order_{j}"].mean()) for j in range(order)},
        "positions": T, "chains": int(len(model_losses)), "params": meta["params"],
    }
    return {"summary": summary, "by_position": by_position}


def plot_loss_by_position(result: dict, path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result["by_position"]
    positions = np.arange(1, len(curves["model"]) + 1)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {"model": dict(color="C0", lw=1.8), "bayes": dict(color="k", lw=1.4),
              "oracle": dict(color="0.5", lw=1.0, ls=":")}
    window = max(1, len(positions) // 64)          # a short moving average: per-position means are noisy
    kernel = np.ones(window)
    support = np.convolve(np.ones(len(positions)), kernel, mode="same")  # fewer points at the ends
    for name, values in curves.items():
        smooth = np.convolve(values, kernel, mode="same") / support
        style = styles.get(name, dict(lw=1.0, ls="--"))
        label = {"model": f"model (gap {result['summary']['gap']:+.4f} nats)",
                 "bayes": "Bayes-optimal (in context)", "oracle": "oracle (true table)"}.get(
                     name, name.replace("_", "-") + " add-beta")
        ax.plot(positions, smooth, label=label, **style)
    ax.axhline(np.log(2), color="0.8", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("position in the chain (log scale)")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return path


def evaluate_and_plot(model, data_dir: str | Path, ctx_len: int, weights_file: str | Path,
                      batch_size: int = 64, device: str | torch.device = "cpu") -> dict:
    """Evaluate on the first min(ctx_len, seq_len - 1) predictions of every validation chain,
    then write `<weights>-icl.json` and `<weights>-icl.png` beside the weights (`-icl-2.*`, ...
    when an earlier evaluation holds those names). The summary's "files" names what was written."""
    positions = min(ctx_len, predictions_per_chain(data_dir))
    result = icl_summary(model_losses_by_position(model, data_dir, positions, batch_size, device),
                         data_dir)
    stem = Path(weights_file).with_suffix("")
    json_path, png_path = new_files(f"{stem}-icl", (".json", ".png"))
    summary = {**result["summary"], "files": {"json": str(json_path), "plot": str(png_path)}}
    atomic_json_save(summary, json_path)
    p = summary["params"]
    plot_loss_by_position(result, png_path,
                          f"order {p['order']}, beta {p['beta']}: {Path(weights_file).name}")
    return summary
