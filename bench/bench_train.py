"""End-to-end training speed: the LM training step against fla, and the ASR state-tuning step.

    python bench/bench_train.py --gpu --json train.json     # 1.6B LM vs fla; 3B + HuBERT-large ASR
    python bench/bench_train.py --cpu-smoke                  # the same code at tiny shapes, CPU

LM: one training step = forward + backward + fused AdamW on bf16 weights, random tokens, at
T = 4096 and 1024; at the shapes of --lm-shapes for every implementation and at each one's
largest batch that fits (found from the memory of a batch-1 step, then tried downwards).
Implementations: "ours" (RWKV eager, the loss of the project's trainer), "ours-compiled"
(RWKV.compile_model(), the whole model as one graph as train.py --compile makes it, the head +
cross-entropy compiled too), "ours-compiled-blocks" (RWKV.compile_blocks(): each block compiled
in place, one compile shared by all of them, so it is ready in a fraction of the whole model's
compile time; the head + cross-entropy compiled too) and "fla" (fla's RWKV6ForCausalLM at the
same shape, its default fused norms and fused cross-entropy), all with random weights. --lm-arch
x070 times an RWKV-7 of the same 24 x 2048 shape (the 1.5B) on the WKV7 backend of
--wkv7-backend, without a peer.
MFU = tokens/s x (6 N + WKV) / the bf16 matrix peak measured in the same run;
N counts every parameter but the embedding; WKV = 12 x layers x dim_att x head_size per token
(4 per state element forward: update and read-out, each a multiply-add; backward twice that).

ASR: SpeechRWKV at 3B with a HuBERT-large-shaped encoder (random, written with save_pretrained
and loaded by SpeechEncoder), 10 s utterances with 36-token transcripts, batch 16, state tuning
(frozen LLM and encoder; time_state and projector trained): utterances/s and MFU with 4 FLOP per
LLM parameter and position (frozen weights: forward and input gradient), the head at predicted
tokens only, plus the encoder forward and the projector's 6 N, with and without gradient
checkpointing, eager and compiled (compile_model, torch.compile's default mode; and its
reduce-overhead mode, CUDA graphs, without checkpointing).

Each step is checked (finite loss; our compiled loss equals the eager one on the same batch) and
the kernels of one step of each LM implementation are profiled and grouped (torch.profiler).
Prints Markdown tables; --json writes everything.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_common import (
    SIZES,
    VOCAB,
    encoder_flops,
    environment,
    free_memory,
    is_oom,
    log,
    matmul_peak,
    median_seconds,
    print_profile,
    profile_kernels,
    random_rwkv,
    save_hubert_folder,
    table,
    write_json,
)

LM_VARIANTS = ("eager", "compiled", "compiled-blocks")


# ---------------------------------------------------------------- LM implementations
class OursLM:
    """RWKV with the loss of the project's LM trainer (cross-entropy on fp32 logits)."""

    def __init__(self, size: str, device: str, **options):
        self.model = random_rwkv(size, device, **options)
        self.model.train()
        self.compiled = False
        self.config = self.model.config

    def compile(self, backend: str, whole_model: bool = True) -> None:
        """whole_model: the model as one graph (compile_model, what train.py --compile does);
        otherwise every block compiled in place (compile_blocks: one block's compile serves all
        of them, so it starts in a fraction of the time). dynamic: one compile serves every
        batch size and length the bench tries."""
        if whole_model:
            self.model.compile_model(backend=backend, dynamic=True)
        else:
            self.model.compile_blocks(backend=backend, dynamic=True)
        self._head_loss = torch.compile(_head_loss, backend=backend, dynamic=True)
        self.compiled = True

    def loss(self, ids):
        if self.compiled:
            hidden, _ = self.model.forward_hidden(ids[:, :-1])
            return self._head_loss(hidden, self.model.head.weight, ids[:, 1:])
        hidden, _ = self.model.forward_hidden(ids[:, :-1])
        logits = self.model.head(hidden)
        return F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())

    def flop_params(self) -> int:
        return sum(p.numel() for n, p in self.model.named_parameters() if n != "emb.weight")


def _head_loss(hidden, weight, targets):
    return F.cross_entropy(F.linear(hidden, weight).float().flatten(0, 1), targets.flatten())


class FlaLM:
    """fla's RWKV6ForCausalLM at our shape: key and value widths = n_embd (expand_k = expand_v = 1),
    head size 64, the same low-rank sizes and FFN width; its defaults otherwise."""

    def __init__(self, size: str, device: str):
        from fla.models import RWKV6Config, RWKV6ForCausalLM

        n_layer, n_embd = SIZES[size]
        config = RWKV6Config(hidden_size=n_embd, num_hidden_layers=n_layer, num_heads=n_embd // 64,
                             expand_k=1.0, expand_v=1.0, intermediate_size=int(3.5 * n_embd) // 32 * 32,
                             proj_low_rank_dim=32, gate_low_rank_dim=64, vocab_size=VOCAB)
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with torch.device(device):
                self.model = RWKV6ForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
        self.model.train()
        self.config = config

    def loss(self, ids):
        # fla shifts the labels itself: T inputs give T - 1 predictions.
        return self.model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss

    def flop_params(self) -> int:
        emb = self.model.get_input_embeddings().weight.numel()
        return sum(p.numel() for p in self.model.parameters()) - emb


def make_optimizer(model, device: str):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-5, fused=device == "cuda")


def train_step(impl, optimizer, ids) -> torch.Tensor:
    loss = impl.loss(ids)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def random_ids(B: int, T: int, device: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randint(1, VOCAB, (B, T + 1), device=device, generator=g)


def run_shape(impl, optimizer, B: int, T: int, device: str, repeats: int) -> dict:
    """Time a training step at B x T; the allocator's peak over the timed steps."""
    ids = random_ids(B, T, device)
    losses = []

    def step():
        losses.append(train_step(impl, optimizer, ids))

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = median_seconds(step, device, warmup=2, repeats=repeats)
    loss = torch.stack(losses).float()
    if not torch.isfinite(loss).all():
        raise RuntimeError(f"non-finite loss at B{B} T{T}: {loss.tolist()}")
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {"B": B, "T": T, "step_s": seconds, "tok_s": B * T / seconds, "peak_gib": peak,
            "loss": loss[-1].item()}


def step_peak(impl, optimizer, B: int, T: int, device: str) -> int:
    """The allocator's peak during one step at B x T (the optimizer state already exists)."""
    free_memory(device)
    torch.cuda.reset_peak_memory_stats()
    train_step(impl, optimizer, random_ids(B, T, device))
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def largest_batch(impl, optimizer, T: int, device: str, limit: int) -> int:
    """The largest batch whose step fits. The peaks of a batch-1 and a batch-2 step give the
    memory per batch row (weights, optimizer state and gradients are the same for both), which
    gives a first guess; batches are then tried downwards from it until one runs."""
    if device != "cuda":
        return min(limit, 2)
    train_step(impl, optimizer, random_ids(1, T, device))      # creates the optimizer state
    peak1 = step_peak(impl, optimizer, 1, T, device)
    try:
        peak2 = step_peak(impl, optimizer, 2, T, device)
    except Exception as err:  # noqa: BLE001 - only an out-of-memory error means "smaller"
        if not is_oom(err):
            raise
        optimizer.zero_grad(set_to_none=True)
        return 1
    free_memory(device)
    free, total = torch.cuda.mem_get_info()
    capacity = free + torch.cuda.memory_reserved() - 2**30        # 1 GiB for workspaces
    per_row = max(peak2 - peak1, 1)
    guess = max(2, min(limit, 2 + int((capacity - peak2) // per_row)))
    log(f"    T{T}: {per_row / 2**30:.2f} GiB per batch row, batch-2 peak {peak2 / 2**30:.1f} GiB; "
        f"try B{guess}")
    for B in range(guess, 2, -1):
        try:
            step_peak(impl, optimizer, B, T, device)
            return B
        except Exception as err:  # noqa: BLE001 - only an out-of-memory error means "smaller"
            if not is_oom(err):
                raise
            optimizer.zero_grad(set_to_none=True)
            free_memory(device)
            log(f"    T{T}: B{B} does not fit")
    return 2


def bench_lm_impl(name: str, impl, args, device: str, peak_flops: float, results: dict) -> None:
    optimizer = make_optimizer(impl.model, device)
    n = impl.flop_params()
    cfg = impl.config
    layers = getattr(cfg, "n_layer", None) or cfg.num_hidden_layers
    width = getattr(cfg, "dim_att", None) or cfg.hidden_size
    flops_per_token = 6 * n + 12 * layers * width * getattr(cfg, "head_size", 64)
    results["lm_params"][name] = n
    for T in args.lm_lengths:
        shapes = [B for (B, t) in args.lm_shapes if t == T]
        try:
            best = largest_batch(impl, optimizer, T, device, args.max_batch)
        except Exception as err:  # noqa: BLE001 - record it, go on with the other shapes
            log(f"  {name} T{T}: batch search failed: {err}")
            best = None
        for B in dict.fromkeys(shapes + ([best] if best else [])):
            label = "largest" if B == best else "fixed"
            if B == best and B in shapes:
                label = "fixed, largest"
            try:
                row = run_shape(impl, optimizer, B, T, device, args.repeats)
            except Exception as err:  # noqa: BLE001 - an OOM at a fixed shape is a result
                optimizer.zero_grad(set_to_none=True)
                free_memory(device)
                row = {"B": B, "T": T, "error": ("out of memory" if is_oom(err) else repr(err)[:300])}
                log(f"  {name} B{B} T{T}: {row['error']}")
            else:
                row["mfu"] = row["tok_s"] * flops_per_token / peak_flops
                log(f"  {name} B{B} T{T} ({label}): {row['tok_s']:.0f} tok/s, MFU {100 * row['mfu']:.1f}%, "
                    f"peak {row['peak_gib']:.1f} GiB, loss {row['loss']:.3f}")
            row.update(impl=name, shape=label)
            results["lm"].append(row)
            free_memory(device)
    if args.profile and device == "cuda" or args.cpu_smoke:
        B, T = args.lm_shapes[0]
        ids = random_ids(B, T, device)
        try:
            train_step(impl, optimizer, ids)
            prof = profile_kernels(lambda: train_step(impl, optimizer, ids), device)
            results["lm_profile"][f"{name} B{B} T{T}"] = prof
            print_profile(f"{name} B{B} T{T}", prof)
        except Exception as err:  # noqa: BLE001
            log(f"  profile of {name} failed: {err!r}")
    free_memory(device)


def check_batch(device: str, T: int) -> torch.Tensor:
    """The batch on which a compiled loss is compared with the eager one."""
    return random_ids(1, T, device, seed=7)


def loss_value(impl, ids) -> float:
    # Under autograd, as in training: a no-grad call would compile another graph.
    return impl.loss(ids).float().item()


def bench_lm(args, device: str, peak_flops: float, results: dict) -> None:
    """Ours eager, then the peer, then ours compiled (each as --lm-variants and --peers ask):
    the compile is the slowest part to start, so the eager comparison is complete even if the
    run is cut short."""
    log(f"\nLM training step, {args.lm_size} {args.lm_arch}")
    options = {"arch": args.lm_arch}
    if args.lm_arch == "x070":
        options["wkv_backend"] = args.wkv7_backend
    if "eager" in args.lm_variants:
        impl = OursLM(args.lm_size, device, **options)
        bench_lm_impl("ours", impl, args, device, peak_flops, results)
        del impl
        free_memory(device)
    if "fla" in args.peers and args.lm_arch != "x060":
        log("  the fla peer is fla's RWKV-6: skipped for " + args.lm_arch)
    elif "fla" in args.peers:
        try:
            peer = FlaLM(args.lm_size, device)
        except Exception as err:  # noqa: BLE001 - a missing or broken peer is reported, not fatal
            log(f"  fla could not be built ({err!r}); skipped")
        else:
            bench_lm_impl("fla", peer, args, device, peak_flops, results)
            del peer
            free_memory(device)
    for variant in ("compiled", "compiled-blocks"):
        if variant not in args.lm_variants:
            continue
        impl = OursLM(args.lm_size, device, **options)
        # The eager loss first, at the weights the compiled model starts from (the timed
        # steps below change them): the same function, computed another way.
        ids = check_batch(device, args.lm_lengths[-1])
        eager = loss_value(impl, ids)
        impl.compile(args.compile_backend, whole_model=variant == "compiled")
        diff = abs(loss_value(impl, ids) - eager)
        impl.model.zero_grad(set_to_none=True)
        results["checks"][f"{variant}_vs_eager_loss_absdiff"] = diff
        log(f"  check: |{variant} loss - eager loss| = {diff:.2e}")
        bench_lm_impl(f"ours-{variant}", impl, args, device, peak_flops, results)
        del impl
        free_memory(device)


# ---------------------------------------------------------------- ASR state tuning
def bench_asr(args, device: str, peak_flops: float, results: dict) -> None:
    from conrwkv.asr import SpeechRWKV
    from conrwkv.asr.encoder import SpeechEncoder
    from conrwkv.asr.projector import Projector
    from conrwkv.config import AsrConfig
    from conrwkv.data.speech import SAMPLE_RATE
    from conrwkv.data.tokenizer import WorldTokenizer

    log(f"\nASR state-tuning step, {args.asr_size} + HuBERT-{args.encoder_size}")
    asr = AsrConfig()
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_hubert_folder(Path(tmp) / "hubert", args.encoder_size)
        encoder = SpeechEncoder(str(folder), dtype=torch.bfloat16).to(device)
    llm = random_rwkv(args.asr_size, device, state_tuning=True)
    projector = Projector(encoder.output_dim, llm.config.n_embd, hidden=asr.projector_hidden,
                          downsample=asr.downsample, kind=asr.projector)
    model = SpeechRWKV(encoder, projector, llm, WorldTokenizer().encode(asr.separator)).to(device)
    model.train()
    rng = np.random.default_rng(0)
    samples = int(args.seconds * SAMPLE_RATE)
    audio = [(0.1 * rng.standard_normal(samples)).astype(np.float32) for _ in range(args.asr_batch)]
    targets = [rng.integers(1, VOCAB, args.transcript_tokens).tolist() for _ in range(args.asr_batch)]
    optimizer = torch.optim.AdamW([p for g in model.parameter_groups() for p in g["params"]], lr=1e-4,
                                  fused=device == "cuda")
    frames = int(model.encoder.frame_counts(torch.tensor([samples]))[0])
    positions = frames // asr.downsample + len(model.separator_ids) + args.transcript_tokens
    cfg = llm.config
    n_blocks = sum(p.numel() for n, p in llm.named_parameters() if n.startswith("blocks."))
    proj_params = sum(p.numel() for p in projector.parameters())
    flops = args.asr_batch * (
        (4 * n_blocks + 12 * cfg.n_layer * cfg.dim_att * cfg.head_size) * positions
        + 4 * cfg.n_embd * cfg.vocab_size * (args.transcript_tokens + 1)
        + encoder_flops(encoder.model.config, frames, samples)
        + 6 * proj_params * (frames // asr.downsample))
    results["asr_setup"] = {"llm": args.asr_size, "encoder": args.encoder_size, "batch": args.asr_batch,
                            "seconds": args.seconds, "llm_positions": positions, "frames": frames,
                            "flop_per_step": flops}
    log(f"  {positions} LLM positions per utterance; {flops / 1e12:.1f} TFLOP per step")

    def step():
        loss = model.loss(audio, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    for mode in (None, "default", "reduce-overhead"):
        llm.__dict__.pop("forward_hidden", None)          # back to eager (compile_model's is per instance)
        torch._dynamo.reset()
        if mode is not None:
            llm.compile_model(backend=args.compile_backend,
                              **({} if mode == "default" or args.cpu_smoke else {"mode": mode}))
        compiled = "eager" if mode is None else "compiled" if mode == "default" else f"compiled {mode}"
        for grad_cp in (False, True) if mode != "reduce-overhead" else (False,):
            llm.config.grad_cp = grad_cp
            losses: list = []
            name = f"{compiled}, grad_cp {'on' if grad_cp else 'off'}"
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                seconds = median_seconds(step, device, warmup=2, repeats=args.repeats)
            except Exception as err:  # noqa: BLE001 - an OOM is a result
                optimizer.zero_grad(set_to_none=True)
                free_memory(device)
                row = {"variant": name, "error": "out of memory" if is_oom(err) else repr(err)[:300]}
                log(f"  {name}: {row['error']}")
                results["asr"].append(row)
                continue
            loss = torch.stack(losses).float()
            peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
            row = {"variant": name, "step_s": seconds, "utt_s": args.asr_batch / seconds,
                   "mfu": flops / seconds / peak_flops, "peak_gib": peak, "loss": loss[-1].item(),
                   "finite": bool(torch.isfinite(loss).all())}
            results["asr"].append(row)
            log(f"  {name}: {row['utt_s']:.1f} utt/s, step {1e3 * seconds:.0f} ms, MFU "
                f"{100 * row['mfu']:.1f}%, peak {peak:.1f} GiB, loss {row['loss']:.3f}")
        if args.profile and device == "cuda" or args.cpu_smoke:
            llm.config.grad_cp = False
            losses = []
            name = f"ASR step, {compiled}, grad_cp off"
            prof = profile_kernels(step, device)
            results["asr_profile"][name] = prof
            print_profile(name, prof)


# ---------------------------------------------------------------- report
def report(results: dict) -> None:
    env = results["env"]
    log(f"\n{env.get('gpu', env['machine'])}, torch {env['torch']}, {env['date']}; bf16 matrix peak "
        f"{results['peak_tflops']:.0f} TFLOP/s (measured)")
    rows = []
    fla = {(r["B"], r["T"]): r for r in results["lm"] if r["impl"] == "fla" and "tok_s" in r}
    for r in results["lm"]:
        if "error" in r:
            rows.append([r["impl"], f"B{r['B']} x T{r['T']}", r["shape"], r["error"], "", "", ""])
            continue
        peer = fla.get((r["B"], r["T"]))
        ratio = f"{r['tok_s'] / peer['tok_s']:.2f}x" if peer and r["impl"] != "fla" else ""
        rows.append([r["impl"], f"B{r['B']} x T{r['T']}", r["shape"], f"{r['tok_s']:,.0f}",
                     f"{100 * r['mfu']:.1f}%", f"{r['peak_gib']:.1f}", ratio])
    if rows:
        log("\nLM training step (fwd + bwd + AdamW), " + results["lm_size"])
        log(table(["impl", "shape", "batch", "tokens/s", "MFU", "peak GiB", "vs fla (same shape)"], rows))
    if results["asr"]:
        setup = results["asr_setup"]
        log(f"\nASR state-tuning step, {setup['llm']} + HuBERT-{setup['encoder']}, batch {setup['batch']} x "
            f"{setup['seconds']:.0f} s ({setup['llm_positions']} LLM positions each)")
        log(table(["variant", "utterances/s", "step ms", "MFU", "peak GiB"],
                  [[r["variant"], r["error"], "", "", ""] if "error" in r else
                   [r["variant"], f"{r['utt_s']:.1f}", f"{1e3 * r['step_s']:.0f}", f"{100 * r['mfu']:.1f}%",
                    f"{r['peak_gib']:.1f}"] for r in results["asr"]]))


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        B, T = item.lower().split("x")
        shapes.append((int(B), int(T)))
    return shapes


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="run at the real shapes on the GPU")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run every code path at tiny shapes on the CPU (fla skipped, compile with "
                             "the aot_eager backend); checks the script, measures nothing meaningful")
    parser.add_argument("--parts", default="lm,asr", help="comma-separated parts to run: lm, asr")
    parser.add_argument("--lm-shapes", default="2x4096,8x1024",
                        help="BxT shapes timed for every LM implementation (the first is profiled); "
                             "each implementation's largest batch at each T is timed too")
    parser.add_argument("--lm-arch", default="x060", choices=("x060", "x070"),
                        help="architecture of our LM: x060 (1.6B) or x070 (1.5B, the same 24 x 2048 shape)")
    parser.add_argument("--wkv7-backend", default="fla", choices=("fla", "torch"),
                        help="WKV7 backend of the x070 LM (fla's chunk_rwkv7, or our chunked torch code)")
    parser.add_argument("--max-batch", type=int, default=64, help="upper bound of the largest-batch search")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per shape (median reported)")
    parser.add_argument("--lm-variants", default="eager,compiled",
                        help=f"comma-separated variants of our LM to time: {', '.join(LM_VARIANTS)} "
                             "(compiled: the whole model as one graph; compiled-blocks: each block, a "
                             "far shorter compile; e.g. compiled alone beside the peer, when one device "
                             "call cannot hold them all)")
    parser.add_argument("--peers", default="fla", help="comma-separated peers to run (fla), or 'none'")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend for the compiled variants")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the torch.profiler kernel breakdowns")
    parser.add_argument("--asr-batch", type=int, default=16, help="utterances per ASR step")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each utterance (s)")
    parser.add_argument("--transcript-tokens", type=int, default=36,
                        help="transcript tokens per utterance (about 10 s of read speech)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.gpu == args.cpu_smoke:
        parser.error("choose one of --gpu and --cpu-smoke")
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs a CUDA device")
    device = "cuda" if args.gpu else "cpu"
    args.lm_size, args.asr_size, args.encoder_size = ("1.6B", "3B", "large") if args.gpu else ("tiny",) * 3
    if args.gpu and args.lm_arch == "x070":
        args.lm_size = "1.5B"
    if args.cpu_smoke:
        args.wkv7_backend = "torch"                   # fla runs on CUDA only
        if args.lm_shapes == parser.get_default("lm_shapes"):
            args.lm_shapes = "2x64,4x16"
        args.compile_backend, args.peers, args.repeats = "aot_eager", "none", 1
        args.asr_batch, args.seconds, args.transcript_tokens = 2, 1.0, 4
    args.lm_shapes = parse_shapes(args.lm_shapes)
    args.lm_lengths = list(dict.fromkeys(T for _, T in args.lm_shapes))
    args.peers = [] if args.peers == "none" else args.peers.split(",")
    args.lm_variants = args.lm_variants.split(",")
    unknown = set(args.lm_variants) - set(LM_VARIANTS)
    if unknown:
        parser.error(f"--lm-variants: unknown {', '.join(sorted(unknown))} "
                     f"(choose from {', '.join(LM_VARIANTS)})")
    parts = args.parts.split(",")
    # A `timeout` around the run sends SIGTERM: exit through the finally below, which prints and
    # saves what was measured so far.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    torch._dynamo.config.cache_size_limit = 64       # one entry per shape; the blocks share them
    results = {"env": environment(device), "command": " ".join(["python"] + sys.argv),
               "lm_size": args.lm_size, "lm": [], "lm_params": {}, "lm_profile": {}, "asr": [],
               "asr_profile": {}, "checks": {}}
    results["peak_tflops"] = matmul_peak(device) / 1e12
    log(f"{results['env']}\nbf16 matrix peak: {results['peak_tflops']:.1f} TFLOP/s")
    try:
        if "lm" in parts:
            bench_lm(args, device, results["peak_tflops"] * 1e12, results)
        if "asr" in parts and args.lm_arch != "x060":
            log("\nASR part skipped: it runs the x060 LLM only")
        elif "asr" in parts:
            bench_asr(args, device, results["peak_tflops"] * 1e12, results)
            free_memory(device)
    finally:
        write_json(args.json, results)
        report(results)


if __name__ == "__main__":
    main()
