"""Several small language models of one shape trained as one batched computation.

The RWKV-ICL sweep trains many models of a few thousand parameters each. One such model leaves a
GPU idle: every step is hundreds of tiny kernels, each launched by Python, so a process is bound
by its host (about 5 steps/s per process when a dozen share a machine). Here the members of a
group (same architecture, depth, width, conv kernel and token shift; any data folder of the same
chain length, any seed) are stacked along a leading "member" axis and run through one model with
`torch.func.vmap`: the kernels are as many as for one model but each does the work of all members,
so the host cost is paid once per step for the whole group.

Each member trains exactly as `train.py --task lm` would train it alone with the same flags (the
same initialisation from its seed, the same batches in the same order, Adam with the same
schedule, its own gradient-norm clip), because:
- Adam is elementwise, so one Adam over the stacked tensors is each member's Adam;
- the loss is the sum of the members' own losses, whose parameters are disjoint, so each member's
  gradient is the one its loss alone gives; the clip is computed per member.
tests/test_lm_ensemble.py checks the weights against train.py runs.

Output, per member, in its own proj_dir (what train.py writes, so that the sweep and `--op eval`
read it the same way): `rwkv-step<N>.pth` (official keys), its `.json` record (with the member's
validation gap against steps under "curve") and the ICL evaluation `rwkv-step<N>-icl.json/png`.
The group folder holds run.json (the settings; a resume must match them) and
`checkpoints/step<N>.ckpt` (every member's weights, the optimizer, the data positions), written
atomically and never deleted, from which a killed group resumes to bit-identical weights on CPU.

    python -m conrwkv.lm.ensemble --spec group.json     (the sweep writes the spec)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, vmap
from tqdm import tqdm

from ..config import ModelConfig, TrainConfig
from ..data.accumulation import WINDOW_TARGETS
from ..data.binidx import BinidxReader
from ..data.sampling import DocumentDataset
from ..io import atomic_json_save, atomic_torch_save, read_json
from ..model import RWKV
from ..train.resume import ProjDirLock, check_run_settings, record_run_settings, remove_stale_temporaries
from ..train.schedule import lr_factor
from ..train.step_files import resume_checkpoints, resume_path, weights_path
from .data import LMDataModule
from .icl_eval import evaluate_and_plot
from .plan import WEIGHTS_NAME, resolve_lm_data

log = logging.getLogger(__name__)

PRECISIONS = ("32-true", "bf16-mixed")


@dataclass(frozen=True)
class Member:
    """One run of the group: its data (a datanew.py folder), its seed and its output folder."""

    data: str
    seed: int
    proj_dir: str


@dataclass(frozen=True)
class GroupSpec:
    """What a group trains: one model shape, the shared training settings, the members."""

    model: ModelConfig
    train: TrainConfig
    members: tuple[Member, ...]
    folder: str                        # run.json and the resumable checkpoints
    device: str = "cpu"
    precision: str = "32-true"
    eval_every: int = 100              # steps between the validation gaps of the curve (0: end only)
    eval_chains: int = 128             # validation chains those gaps are measured on
    cuda_graphs: bool = False          # replay the training step from a CUDA graph (CUDA only)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> GroupSpec:
        return cls(model=ModelConfig(**obj["model"]), train=TrainConfig(**obj["train"]),
                   members=tuple(Member(**m) for m in obj["members"]),
                   **{k: obj[k] for k in ("folder", "device", "precision", "eval_every", "eval_chains")},
                   cuda_graphs=obj.get("cuda_graphs", False))


def check_spec(spec: GroupSpec) -> None:
    """Refuse what the batched step does not compute as train.py would, naming the setting."""
    cfg = spec.train
    problems = []
    if not spec.members:
        problems.append("the group has no members")
    if cfg.accumulate_grad_batches != 1:
        problems.append(f"accumulate_grad_batches {cfg.accumulate_grad_batches} (only 1)")
    if cfg.weight_decay:
        problems.append(f"weight_decay {cfg.weight_decay} (only 0: Adam, as the sweep uses)")
    if cfg.epochs:
        problems.append(f"epochs {cfg.epochs} (give max_steps)")
    if cfg.head_tokens != "all":
        problems.append(f"head_tokens {cfg.head_tokens!r} (only all)")
    if cfg.max_steps < 1:
        problems.append(f"max_steps {cfg.max_steps}")
    if spec.model.wkv_backend != "torch":
        problems.append(f"wkv_backend {spec.model.wkv_backend!r} (only torch: the CUDA kernels "
                        f"are not batched over models)")
    if spec.model.grad_cp:
        problems.append("grad_cp (not needed for models this small)")
    if spec.precision not in PRECISIONS:
        problems.append(f"precision {spec.precision!r} (one of {', '.join(PRECISIONS)})")
    if spec.precision == "bf16-mixed" and not spec.device.startswith("cuda"):
        problems.append("bf16-mixed off a GPU (use 32-true)")
    if spec.cuda_graphs and not spec.device.startswith("cuda"):
        problems.append("cuda_graphs off a GPU")
    dirs = [m.proj_dir for m in spec.members]
    if len(set(dirs)) != len(dirs):
        problems.append("two members share a proj_dir")
    if problems:
        raise ValueError(f"ensemble group {spec.folder}: cannot train " + "; ".join(problems))


class _MemberData:
    """One member's training batches in train.py's order, and its position for a resume."""

    def __init__(self, member: Member, cfg: TrainConfig, vocab_size: int):
        cfg = dataclasses.replace(cfg, data_file=member.data, seed=member.seed, proj_dir=member.proj_dir)
        self.lm_data = resolve_lm_data(cfg)
        if self.lm_data.markov_folder is None:
            raise ValueError(f"{member.data}: an ensemble member's data must be a datanew.py folder")
        module = LMDataModule(cfg, vocab_size, self.lm_data)
        module.setup("fit")
        self.loader = module.train_dataloader()
        self._iterator = None

    def next_batch(self) -> dict:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        try:
            return next(self._iterator)
        except StopIteration:                   # the epoch ended: the next one, as Lightning does
            self.loader.batch_sampler.set_epoch(self.loader.batch_sampler.epoch + 1)
            self._iterator = iter(self.loader)
            return next(self._iterator)

    def state_dict(self) -> dict:
        state = self.loader.state_dict()
        if state["batches"] == state["batches_per_epoch"]:       # resume at the next epoch's start
            state = {**state, "epoch": state["epoch"] + 1, "batches": 0}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
        self.loader.batch_sampler.set_epoch(state["epoch"])


class _Validation:
    """The first `chains` validation chains of each member's folder and their Bayes-optimal
    losses at the same positions, for the gap against steps (the final evaluation uses all)."""

    def __init__(self, members: list[_MemberData], chains: int, ctx_len: int, device: str):
        inputs, targets, bayes = [], [], []
        for data in members:
            folder = data.lm_data.markov_folder
            dataset = DocumentDataset(BinidxReader(folder / "val"), ctx_len)
            n = min(chains, len(dataset))
            items = [dataset[i] for i in range(n)]
            if not all(bool(item["mask"].all()) for item in items):
                raise ValueError(f"{folder}: validation chains shorter than ctx_len {ctx_len}")
            inputs.append(torch.stack([item["input"] for item in items]))
            targets.append(torch.stack([item["target"] for item in items]))
            with np.load(folder / "val_curves.npz") as refs:
                bayes.append(float(refs["bayes_by_sequence"][:n, :ctx_len].astype(np.float64).mean()))
        if len({len(x) for x in inputs}) != 1:
            raise ValueError("the members' validation folders hold different numbers of chains")
        self.inputs = torch.stack(inputs).to(device)
        self.targets = torch.stack(targets).to(device)
        self.bayes = bayes


class Ensemble:
    """The members' parameters stacked [M, ...] and one model that runs them all (vmap)."""

    def __init__(self, model_cfg: ModelConfig, seeds: list[int], device: str):
        models = []
        for seed in seeds:
            torch.manual_seed(seed)                 # as train_lm seeds before building the model
            models.append(RWKV(model_cfg))
        self.config = model_cfg
        self.params = {name: torch.stack([dict(m.named_parameters())[name].detach() for m in models])
                       .to(device).requires_grad_(True) for name, _ in models[0].named_parameters()}
        self.buffers = {name: torch.stack([dict(m.named_buffers())[name] for m in models]).to(device)
                        for name, _ in models[0].named_buffers()}
        self._shape = copy.deepcopy(models[0]).to("meta")

        def one(params: dict, buffers: dict, idx: Tensor) -> Tensor:
            return functional_call(self._shape, (params, buffers), (idx,))[0]

        self._forward = vmap(one)

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def logits(self, idx: Tensor) -> Tensor:
        """idx [M, B, T] -> logits [M, B, T, V], member m through its own weights."""
        return self._forward(self.params, self.buffers, idx)

    def member_model(self, i: int) -> RWKV:
        model = RWKV(self.config, init=False)
        model.load_state_dict({**{n: p[i].detach().float().cpu() for n, p in self.params.items()},
                               **{n: b[i].cpu() for n, b in self.buffers.items()}})
        return model


def clip_per_member(grads: list[Tensor], max_norm: float) -> Tensor:
    """Scale each member's gradients (slices [m] of every tensor) to a total 2-norm of at most
    max_norm, as torch.nn.utils.clip_grad_norm_ does for one model. Returns the norms [M]. A
    tensor without a gradient (None: RWKV-7's first block does not use its value-residual
    weights) is left out, as that function and Adam leave it out."""
    grads = [g for g in grads if g is not None]
    norms = torch.stack([g.float().pow(2).flatten(1).sum(1) for g in grads]).sum(0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
    return norms


class _CapturedStep:
    """The batched step recorded once as a CUDA graph and replayed: one launch per step instead of
    thousands, which is what bounds these small models (docs/benchmarks.md, "RWKV-ICL sweep
    speed"). The batch is copied into static buffers before each replay; the parameters, Adam's
    state and the learning-rate tensor are the trainer's own, updated in place by the graph.

    Recording needs warm-up steps first (on a side stream, as torch.cuda.graph asks); they would
    train, so the parameters and Adam's state are saved before them and put back after: the
    first replayed step starts from exactly the state the trainer had."""

    WARMUP_STEPS = 3

    def __init__(self, trainer: GroupTrainer, batch: tuple[Tensor, ...]):
        self.static = [x.clone() for x in batch]
        params = list(trainer.ensemble.params.values())
        saved_params = [p.detach().clone() for p in params]
        saved_optimizer = copy.deepcopy(trainer.optimizer.state_dict())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_STEPS):
                trainer.optimizer.zero_grad(set_to_none=True)
                trainer._forward_backward_update(*self.static)
        torch.cuda.current_stream().wait_stream(side)
        trainer.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.losses = trainer._forward_backward_update(*self.static)
        with torch.no_grad():
            for p, saved in zip(params, saved_params):
                p.copy_(saved)
        _load_optimizer_in_place(trainer.optimizer, saved_optimizer)

    def replay(self, batch: tuple[Tensor, ...]) -> Tensor:
        for static, x in zip(self.static, batch):
            static.copy_(x, non_blocking=True)
        self.graph.replay()
        return self.losses.clone()


def _load_optimizer_in_place(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Put Adam's saved state back into the tensors it has now (a captured graph reads and writes
    those very tensors: load_state_dict would replace them). A parameter that had no state yet
    (a fresh run: Adam creates it at the first step) gets Adam's initial one: zeros."""
    by_index = state["state"]
    for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        saved = by_index.get(i, {})
        for key, current in optimizer.state[p].items():
            if isinstance(current, Tensor):
                if key in saved:
                    current.copy_(saved[key])
                else:
                    current.zero_()


class GroupTrainer:
    def __init__(self, spec: GroupSpec):
        check_spec(spec)
        self.spec, self.cfg = spec, spec.train
        self.folder = Path(spec.folder)
        self.data = [_MemberData(m, self.cfg, spec.model.vocab_size) for m in spec.members]
        self.ensemble = Ensemble(spec.model, [m.seed for m in spec.members], spec.device)
        cfg = self.cfg
        # A captured step reads the learning rate from a tensor that the schedule fills before
        # each replay, and Adam keeps its step count on the device (capturable).
        graphs = spec.cuda_graphs
        self._lr = torch.tensor(cfg.lr_init, device=spec.device) if graphs else None
        self.optimizer = torch.optim.Adam(list(self.ensemble.params.values()),
                                          lr=self._lr if graphs else cfg.lr_init,
                                          betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                                          capturable=graphs)
        ratio = cfg.lr_final / cfg.lr_init if cfg.lr_init > 0 else 1.0
        self._lr_factor = lambda step: lr_factor(step, cfg.max_steps, cfg.warmup_steps, ratio,  # noqa: E731
                                                 cfg.lr_schedule)
        # Eager steps follow LambdaLR, as train.py's do; a captured step's learning rate is
        # computed from the step count, so no scheduler replaces or aliases the tensor.
        self.scheduler = None if graphs else torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                                               self._lr_factor)
        self.validation = _Validation(self.data, spec.eval_chains, cfg.ctx_len, spec.device)
        self._graph: _CapturedStep | None = None
        self.step = 0
        self.curves: list[list[dict]] = [[] for _ in spec.members]
        self.train_seconds = 0.0

    # ------------------------------------------------------------------ the batched step
    def _batch(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        batches = [d.next_batch() for d in self.data]
        device = self.spec.device
        stack = lambda key: torch.stack([b[key] for b in batches]).to(device, non_blocking=True)  # noqa: E731
        counts = torch.tensor([float(b[WINDOW_TARGETS]) for b in batches], device=device)
        return stack("input"), stack("target"), stack("mask"), counts

    def _autocast(self):
        enabled = self.spec.precision == "bf16-mixed"
        # The autocast cache would hold casts made during a capture; a replay must make them again.
        return torch.autocast("cuda" if self.spec.device.startswith("cuda") else "cpu",
                              dtype=torch.bfloat16, enabled=enabled, cache_enabled=not self.spec.cuda_graphs)

    def _forward_backward_update(self, idx: Tensor, target: Tensor, mask: Tensor, counts: Tensor) -> Tensor:
        """Loss, gradients, clip and Adam update of every member: what one step computes, eager
        or captured. Returns the members' losses [M]."""
        with self._autocast():
            logits = self.ensemble.logits(idx)
        losses = F.cross_entropy(logits.float().flatten(0, 2), target.flatten(), reduction="none")
        per_member = (losses.view_as(target) * mask).flatten(1).sum(1) / counts.clamp(min=1)
        per_member.sum().backward()
        params = list(self.ensemble.params.values())
        if self.cfg.grad_clip:
            clip_per_member([p.grad for p in params], self.cfg.grad_clip)
        self.optimizer.step()
        return per_member.detach()

    def train_step(self) -> Tensor:
        """One optimizer step of every member; returns their losses [M] (not synchronised)."""
        batch = self._batch()
        if self.spec.cuda_graphs:
            if self._graph is None:
                self._graph = _CapturedStep(self, batch)
            self._lr.fill_(self.cfg.lr_init * self._lr_factor(self.step))
            losses = self._graph.replay(batch)
        else:
            losses = self._forward_backward_update(*batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
        self.step += 1
        return losses

    @torch.no_grad()
    def validation_gaps(self) -> list[dict]:
        v = self.validation
        rows = []
        for start in range(0, v.inputs.shape[1], 32):
            with self._autocast():
                logits = self.ensemble.logits(v.inputs[:, start:start + 32])
            target = v.targets[:, start:start + 32]
            losses = F.cross_entropy(logits.float().flatten(0, 2), target.flatten(), reduction="none")
            rows.append(losses.view_as(target).double().flatten(1).sum(1))
        totals = (torch.stack(rows).sum(0) / v.targets[0].numel()).tolist()
        return [{"step": self.step, "loss": loss, "gap": loss - bayes}
                for loss, bayes in zip(totals, v.bayes)]

    # ------------------------------------------------------------------ saving and resuming
    def settings(self) -> dict:
        return {"task": "lm-ensemble", "model": dataclasses.asdict(self.spec.model),
                "train": dataclasses.asdict(self.cfg), "precision": self.spec.precision,
                "members": [dataclasses.asdict(m) for m in self.spec.members],
                "eval_every": self.spec.eval_every, "eval_chains": self.spec.eval_chains,
                "cuda_graphs": self.spec.cuda_graphs}

    def save_resumable(self) -> None:
        path = resume_path(self.folder, self.step)
        if path.exists():
            return
        atomic_torch_save({"step": self.step, "train_seconds": self.train_seconds,
                           "params": {n: p.detach() for n, p in self.ensemble.params.items()},
                           "optimizer": self.optimizer.state_dict(),
                           "scheduler": self.scheduler.state_dict() if self.scheduler else {},
                           "data": [d.state_dict() for d in self.data],
                           "curves": self.curves}, path)

    def _read_checkpoint(self) -> tuple[Path, dict] | None:
        """The newest readable checkpoint of the group; a damaged newer one is named and passed
        over (kept where it is), as train.py's resume does."""
        damaged = []
        for path in resume_checkpoints(self.folder):
            try:
                state = torch.load(path, map_location=self.spec.device, weights_only=True)
            except Exception as err:      # torch raises RuntimeError, EOFError, UnpicklingError, ...
                damaged.append(f"{path} ({type(err).__name__})")
                continue
            if damaged:
                log.warning("passing over damaged checkpoints: %s", "; ".join(damaged))
            return path, state
        if damaged:
            raise ValueError(f"no checkpoint of {self.folder} can be read: {'; '.join(damaged)}")
        return None

    def resume(self) -> bool:
        found = self._read_checkpoint()
        if found is None:
            return False
        path, state = found
        with torch.no_grad():
            for name, p in self.ensemble.params.items():
                p.copy_(state["params"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        if self._lr is not None:            # the loaded groups hold a copy of the lr tensor
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        for data, position in zip(self.data, state["data"]):
            data.load_state_dict(position)
        self.step, self.curves = state["step"], state["curves"]
        self.train_seconds = state["train_seconds"]
        log.warning("resuming %s from %s", self.folder, path)
        return True

    def write_members(self) -> list[dict]:
        """Each member's weights, record and ICL evaluation in its proj_dir; a file that exists
        is kept (a resumed group that was killed while writing them finishes the rest)."""
        results = []
        for i, (member, data) in enumerate(zip(self.spec.members, self.data)):
            proj = Path(member.proj_dir)
            proj.mkdir(parents=True, exist_ok=True)
            weights = weights_path(proj, WEIGHTS_NAME, self.step)
            record = weights.with_suffix(".json")
            final = self.curves[i][-1] if self.curves[i] else {}
            model_cfg = dataclasses.asdict(self.spec.model)
            train_cfg = dataclasses.asdict(dataclasses.replace(
                self.cfg, data_file=member.data, seed=member.seed, proj_dir=member.proj_dir))
            if not record.exists():
                atomic_json_save({"step": self.step, "metrics": {"val/loss": final.get("loss"),
                                                                  "val/gap": final.get("gap")},
                                  "train_seconds": round(self.train_seconds, 1), "task": "lm",
                                  "model": model_cfg, "train": train_cfg,
                                  "ensemble": {"group": str(self.folder), "members": len(self.data),
                                               "precision": self.spec.precision},
                                  "curve": self.curves[i]}, record)
            model = self.ensemble.member_model(i)
            if not weights.exists():
                model.save_checkpoint(weights)
            evaluated = sorted(proj.glob(f"{weights.stem}-icl*.json"))
            summary = (read_json(evaluated[-1], "ICL evaluation") if evaluated else
                       evaluate_and_plot(model.to(self.spec.device), data.lm_data.markov_folder,
                                         self.cfg.ctx_len, weights, batch_size=64,
                                         device=self.spec.device))
            results.append(summary)
        return results

    # ------------------------------------------------------------------ the run
    def run(self, progress: bool = True) -> list[dict]:
        lock = ProjDirLock(self.folder)
        lock.acquire()
        try:
            remove_stale_temporaries(self.folder)
            check_run_settings(self.folder, self.settings())
            record_run_settings(self.folder, self.settings())
            self.resume()
            self._train(progress)
            return self.write_members()
        finally:
            lock.release()

    def _train(self, progress: bool) -> None:
        cfg, spec = self.cfg, self.spec
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not progress,
                   desc=f"{len(self.data)} models", unit="step", dynamic_ncols=True)
        started = time.perf_counter() - self.train_seconds
        while self.step < cfg.max_steps:
            losses = self.train_step()
            bar.update(1)
            at_end = self.step == cfg.max_steps
            if self.step % max(cfg.log_every, 1) == 0 or at_end:
                values = losses.tolist()
                bad = [spec.members[i].proj_dir for i, v in enumerate(values) if not math.isfinite(v)]
                if bad:
                    raise FloatingPointError(f"step {self.step}: the training loss is not finite for "
                                             f"{', '.join(bad)} (group {self.folder}); lower --lr-init")
                bar.set_postfix(loss=f"{min(values):.3f}-{max(values):.3f}")
            if (spec.eval_every and self.step % spec.eval_every == 0) or at_end:
                for curve, point in zip(self.curves, self.validation_gaps()):
                    curve.append(point)
            self.train_seconds = time.perf_counter() - started
            if (cfg.save_every and self.step % cfg.save_every == 0) or at_end:
                self.save_resumable()
        bar.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="JSON file of the group (GroupSpec.to_json()).")
    p.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        spec = GroupSpec.from_json(read_json(args.spec, "ensemble group spec"))
        results = GroupTrainer(spec).run(progress=not args.no_progress)
    except (ValueError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps([{"proj_dir": m.proj_dir, "gap": r["gap"]} for m, r in zip(spec.members, results)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
