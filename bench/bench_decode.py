"""Decoding speed: RNN-mode generation and prefill at 1.6B against the `rwkv` package's CUDA path,
and the real-time factor of transcription.

    python bench/bench_decode.py --gpu --json decode.json
    python bench/bench_decode.py --cpu-smoke        # the same code at tiny shapes on the CPU

A random 1.6B RWKV-6 (24 x 2048, vocabulary 65536) is written with our official-format writer
(RWKV.save_checkpoint, bf16) and that one file is loaded by both: RWKV.from_checkpoint and
`rwkv.model.RWKV(path, strategy="cuda bf16")` with RWKV_CUDA_ON=1 (its extensions are built in a
background process while our side is prepared).

Checks: prefill logits and the recurrent state after a prompt, and the logits of the following
RNN steps, ours against the package (bf16 both, relative error); the CUDA-graph step against the
eager step (same greedy tokens). Timings: prefill of --prefill tokens (last-position logits only,
for both); greedy generation, the argmax on the device, at batch 1 (package, ours eager, ours CUDA
graph) and batch 32 (ours: the package has no batch dimension); the kernel time per token of each
from torch.profiler, which shows whether a decoder is bound by the host or by the GPU; the
weight-read floor from a measured copy bandwidth. Transcription: greedy_decode (our decode path)
of 10 s utterances at batch 1 and 16, with its eager loop and with its CUDA-graph stepper (the
transcripts of the two compared), through SpeechRWKV with the same LLM and a HuBERT-large-shaped
encoder (random; written with save_pretrained, loaded by SpeechEncoder), real-time factor =
wall time / seconds of audio. Random weights rarely emit the end token, so every utterance
runs to the length limit (8 tokens per second + 10): a worst case for the decoder.

Then the same LLM compiled as `--compile` compiles it for eval / predict (RWKV.compile_model with
dynamic=True, asr/run.py's compile_for_decoding): the prefill, the CUDA-graph step at batch 1 and
--batch, and the stepper's transcription, each checked against the eager model (prefill logits,
the greedy tokens that agree before the first difference).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import (
    VOCAB,
    environment,
    free_memory,
    log,
    median_seconds,
    print_profile,
    profile_kernels,
    random_rwkv,
    save_hubert_folder,
    synchronize,
    table,
    write_json,
)

from conrwkv.model import RWKV, RNNStepper


def rel(a, b) -> float:
    a, b = a.double().flatten(), b.double().flatten().to(a.device)
    return ((a - b).norm() / b.norm()).item()


def build_rwkv_extensions(folder: str) -> None:
    """Load a tiny head-size-64 x060 file with the package's CUDA path: this compiles both of its
    extensions (wkv_cuda at import, rwkv6 at load) into torch's extension cache."""
    os.environ["RWKV_CUDA_ON"] = "1"
    path = Path(folder) / "tiny.pth"
    random_rwkv("tiny", "cpu", vocab=256).save_checkpoint(path)
    from rwkv.model import RWKV

    RWKV(str(path), strategy="cuda bf16", verbose=False)


def copy_bandwidth() -> float:
    import triton.testing

    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() / (ms * 1e-3)


class Package:
    """The `rwkv` package's model behind the calls the bench makes."""

    def __init__(self, path: str, device: str):
        if device == "cuda":
            os.environ["RWKV_CUDA_ON"] = "1"
        from rwkv.model import RWKV

        self.model = RWKV(path, strategy="cuda bf16" if device == "cuda" else "cpu fp32", verbose=False)

    def prefill(self, tokens: list[int]):
        logits, state = self.model.forward(tokens, None)
        return logits.float(), state

    def generate(self, first: int, state, n: int) -> list[int]:
        # The package's API takes Python token ids: every step waits for the previous argmax.
        out, token = [], first
        for _ in range(n):
            logits, state = self.model.forward([token], state)
            token = int(logits.argmax())
            out.append(token)
        return out


@torch.no_grad()
def ours_prefill(model: RWKV, ids: torch.Tensor):
    hidden, state = model.forward_hidden(ids)
    return model.head(hidden[:, -1]).float(), state


@torch.no_grad()
def ours_eager_generate(model: RWKV, first: torch.Tensor, state, n: int) -> torch.Tensor:
    tokens, out = first[:, None], []
    for _ in range(n):
        logits, state = model(tokens, state)
        tokens = logits[:, -1].argmax(-1, keepdim=True)
        out.append(tokens)
    return torch.cat(out, dim=1)


def bench_lm(args, device: str, folder: Path, builder, results: dict) -> RWKV:
    path = folder / "model.pth"
    source = random_rwkv(args.size, device)
    source.save_checkpoint(path)
    del source
    free_memory(device)
    model = RWKV.from_checkpoint(path, dtype=torch.bfloat16, device=device, state_tuning=True).eval()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(1, VOCAB, (args.prefill,), generator=g)
    ids = prompt[None].to(device)
    n1, n32 = args.tokens, args.tokens

    # ---- ours: checks and timings first, so that they come out even if the package fails
    logits, state = ours_prefill(model, ids)
    first = logits.argmax(-1)
    eager1 = RNNStepper(model, 1, use_graph=False)
    graph1 = RNNStepper(model, 1)
    eager1.reset(state)
    graph1.reset(state)
    same = torch.equal(eager1.greedy(first, 32), graph1.greedy(first, 32))
    results["checks"]["graph_equals_eager_32_tokens"] = same
    log(f"  check: CUDA-graph greedy tokens == eager ({32} steps): {same}")
    timings = results["timings"]
    timings["ours_prefill_s"] = median_seconds(lambda: ours_prefill(model, ids), device, 2, args.repeats)
    timings["ours_eager_b1_s"] = median_seconds(lambda: ours_eager_generate(model, first, state, n1),
                                                device, 1, args.repeats) / n1
    timings["ours_graph_b1_s"] = median_seconds(lambda: (graph1.reset(state), graph1.greedy(first, n1)),
                                                device, 1, args.repeats) / n1
    big = args.batch
    ids32 = torch.randint(1, VOCAB, (big, args.prefill), generator=g).to(device)
    logits32, state32 = ours_prefill(model, ids32)
    first32 = logits32.argmax(-1)
    graph32 = RNNStepper(model, big)
    timings["ours_eager_bN_s"] = median_seconds(lambda: ours_eager_generate(model, first32, state32, n32),
                                                device, 1, args.repeats) / n32
    timings["ours_graph_bN_s"] = median_seconds(
        lambda: (graph32.reset(state32), graph32.greedy(first32, n32)), device, 1, args.repeats) / n32
    ms = {key: 1e3 * value for key, value in timings.items()}
    log(f"  ours: prefill {ms['ours_prefill_s']:.1f} ms; per step: eager b1 {ms['ours_eager_b1_s']:.2f} ms, "
        f"graph b1 {ms['ours_graph_b1_s']:.2f} ms, eager b{big} {ms['ours_eager_bN_s']:.2f} ms, "
        f"graph b{big} {ms['ours_graph_bN_s']:.2f} ms")
    profiles = results["profiles"]
    steps = 8
    profiles["ours eager b1 (8 tokens)"] = profile_kernels(
        lambda: ours_eager_generate(model, first, state, steps), device)
    profiles["ours graph b1 (8 tokens)"] = profile_kernels(
        lambda: (graph1.reset(state), graph1.greedy(first, steps)), device)

    # ---- the package
    if "rwkv" in args.peers:
        if builder is not None:
            code = builder.wait()
            log(f"  rwkv extensions built (exit {code})")
        try:
            pkg = Package(str(path), device)
        except ImportError as err:
            log(f"  the rwkv package is not installed ({err}); skipped")
            return model
        ref_logits, ref_state = pkg.prefill(prompt.tolist())
        checks = results["checks"]
        checks["prefill_logits_rel"] = rel(logits[0], ref_logits)
        checks["prefill_wkv_state_rel_max"] = max(rel(layer.wkv[0], ref_state[3 * i + 1])
                                                  for i, layer in enumerate(state))
        # The same tokens through both from their own prefill states: our greedy choices.
        eager1.reset(state)
        token, pkg_state, worst = int(first), ref_state, 0.0
        for _ in range(8):
            ours_logits = eager1.step(torch.tensor([token], device=device)).clone()
            pkg_logits, pkg_state = pkg.model.forward([token], pkg_state)
            worst = max(worst, rel(ours_logits[0], pkg_logits.float()))
            token = int(ours_logits.argmax())
        checks["rnn_step_logits_rel_max"] = worst
        log(f"  check vs rwkv: prefill logits rel {checks['prefill_logits_rel']:.2e}, WKV states rel max "
            f"{checks['prefill_wkv_state_rel_max']:.2e}, 8 RNN steps logits rel max {worst:.2e}")
        timings["rwkv_prefill_s"] = median_seconds(lambda: pkg.prefill(prompt.tolist()), device, 2,
                                                   args.repeats)
        n_pkg = args.package_tokens
        timings["rwkv_b1_s"] = median_seconds(lambda: pkg.generate(int(first), ref_state, n_pkg),
                                              device, 1, args.repeats) / n_pkg
        log(f"  rwkv: prefill {1e3 * timings['rwkv_prefill_s']:.1f} ms; "
            f"b1 {1e3 * timings['rwkv_b1_s']:.2f} ms per token")
        profiles["rwkv b1 (8 tokens)"] = profile_kernels(lambda: pkg.generate(int(first), ref_state, steps),
                                                         device)
        del pkg
        free_memory(device)
    for name, prof in profiles.items():
        prof["per_token_ms"] = prof["kernel_ms"] / steps
        print_profile(name, prof)
    return model


def leading_agreement(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many tokens two greedy runs [B, n] share before their first difference (the least
    over the rows): bf16 rounding that differs may flip an argmax, and every later token follows."""
    same = (a == b).long().cumprod(dim=1)
    return int(same.sum(dim=1).min())


def bench_compiled(args, device: str, model: RWKV, results: dict) -> None:
    """The prefill and the CUDA-graph steps of `model` compiled in place (as compile_for_decoding
    does), timed and checked against its eager self."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (1, args.prefill), generator=g).to(device)
    logits, state = ours_prefill(model, ids)
    first = logits.argmax(-1)
    eager = RNNStepper(model, 1)
    eager.reset(state)
    eager_tokens = eager.greedy(first, 32)
    del eager
    model.compile_model(dynamic=True)
    start = time.perf_counter()
    compiled_logits, compiled_state = ours_prefill(model, ids)
    graph1 = RNNStepper(model, 1)
    log(f"  compiled: first prefill and step capture took {time.perf_counter() - start:.0f} s")
    checks, timings = results["checks"], results["timings"]
    checks["compiled_prefill_logits_rel"] = rel(compiled_logits[0], logits[0])
    graph1.reset(compiled_state)
    checks["compiled_graph_tokens_agreeing_of_32"] = leading_agreement(graph1.greedy(first, 32), eager_tokens)
    log(f"  check: compiled prefill logits rel {checks['compiled_prefill_logits_rel']:.2e}; compiled greedy "
        f"tokens agree with eager for {checks['compiled_graph_tokens_agreeing_of_32']} of 32")
    n = args.tokens
    timings["compiled_prefill_s"] = median_seconds(lambda: ours_prefill(model, ids), device, 2, args.repeats)
    timings["compiled_graph_b1_s"] = median_seconds(
        lambda: (graph1.reset(compiled_state), graph1.greedy(first, n)), device, 1, args.repeats) / n
    big = args.batch
    ids_big = torch.randint(1, VOCAB, (big, args.prefill), generator=g).to(device)
    logits_big, state_big = ours_prefill(model, ids_big)
    first_big = logits_big.argmax(-1)
    graph_big = RNNStepper(model, big)
    timings["compiled_graph_bN_s"] = median_seconds(
        lambda: (graph_big.reset(state_big), graph_big.greedy(first_big, n)), device, 1, args.repeats) / n
    ms = {key: 1e3 * value for key, value in timings.items()}
    log(f"  compiled: prefill {ms['compiled_prefill_s']:.1f} ms; per step: graph b1 "
        f"{ms['compiled_graph_b1_s']:.2f} ms, graph b{big} {ms['compiled_graph_bN_s']:.2f} ms")
    steps = 8
    results["profiles"]["ours compiled graph b1 (8 tokens)"] = prof = profile_kernels(
        lambda: (graph1.reset(compiled_state), graph1.greedy(first, steps)), device)
    prof["per_token_ms"] = prof["kernel_ms"] / steps
    print_profile("ours compiled graph b1 (8 tokens)", prof)


def bench_rtf(args, device: str, folder: Path, llm: RWKV, results: dict, compiled: bool = False) -> None:
    from conrwkv.asr import SpeechRWKV, greedy_decode
    from conrwkv.asr.encoder import SpeechEncoder
    from conrwkv.asr.projector import Projector
    from conrwkv.config import AsrConfig
    from conrwkv.data.speech import SAMPLE_RATE
    from conrwkv.data.tokenizer import WorldTokenizer

    asr = AsrConfig()
    encoder = SpeechEncoder(str(save_hubert_folder(folder / "hubert", args.encoder_size)),
                            dtype=torch.bfloat16).to(device)
    projector = Projector(encoder.output_dim, llm.config.n_embd, hidden=asr.projector_hidden,
                          downsample=asr.downsample, kind=asr.projector)
    model = SpeechRWKV(encoder, projector, llm, WorldTokenizer().encode(asr.separator)).to(device)
    rng = np.random.default_rng(0)
    samples = int(args.seconds * SAMPLE_RATE)
    audio = [(0.1 * rng.standard_normal(samples)).astype(np.float32) for _ in range(args.asr_batch)]
    for batch in (1, args.asr_batch):
        clips = audio[:batch]
        hypotheses = {}
        for stepper in (True,) if compiled else (False, True):
            outputs: list = []

            def run(clips=clips, outputs=outputs, stepper=stepper):
                outputs.append(greedy_decode(model, clips, stepper=stepper))

            seconds = median_seconds(run, device, 1, args.repeats)
            hypotheses[stepper] = outputs[-1]
            tokens = sum(len(o) for o in outputs[-1])
            decoder = "CUDA-graph stepper" if stepper else "eager loop"
            row = {"batch": batch, "decoder": f"compiled LLM, {decoder}" if compiled else decoder,
                   "seconds": seconds, "audio_s": batch * args.seconds,
                   "rtf": seconds / (batch * args.seconds), "tokens": tokens}
            results["rtf"].append(row)
            log(f"  transcription b{batch}, {row['decoder']}: {seconds:.3f} s for {row['audio_s']:.0f} s of "
                f"audio, RTF {row['rtf']:.4f}, {tokens} tokens")
        if compiled:
            results.setdefault("compiled_hypotheses", {})[str(batch)] = hypotheses[True]
            reference = results["eager_hypotheses"][str(batch)]
            same = sum(a == b for a, b in zip(reference, hypotheses[True]))
            results["checks"][f"compiled_transcripts_equal_eager_b{batch}"] = f"{same}/{batch}"
            log(f"  check: compiled stepper transcripts equal the eager loop's for {same} of {batch} "
                "utterances")
            continue
        results.setdefault("eager_hypotheses", {})[str(batch)] = hypotheses[False]
        same = sum(a == b for a, b in zip(hypotheses[False], hypotheses[True]))
        results["checks"][f"transcripts_stepper_equal_eager_b{batch}"] = f"{same}/{batch}"
        log(f"  check: stepper transcripts equal the eager loop's for {same} of {batch} utterances")


def report(results: dict) -> None:
    env, t, c = results["env"], results["timings"], results["checks"]
    log(f"\n{env.get('gpu', env['machine'])}, torch {env['torch']}, {env['date']}; model {results['size']}, "
        f"bf16; prefill {results['prefill']} tokens")
    if "bandwidth_gbs" in results:
        log(f"copy bandwidth {results['bandwidth_gbs']:.0f} GB/s; weight-read floor per token "
            f"{results['floor_ms']:.2f} ms ({1e3 / results['floor_ms']:.0f} tok/s at batch 1)")
    rows = []
    pkg_b1 = t.get("rwkv_b1_s")
    pkg_pre = t.get("rwkv_prefill_s")

    def ratio(ours, peer):
        return f"{peer / ours:.2f}x" if peer else ""

    if "ours_prefill_s" in t:
        n = results["prefill"]
        if pkg_pre:
            rows.append(["rwkv package", f"prefill {n}", f"{n / pkg_pre:,.0f}", f"{1e3 * pkg_pre:.1f} ms",
                         ""])
        rows.append(["ours", f"prefill {n}", f"{n / t['ours_prefill_s']:,.0f}",
                     f"{1e3 * t['ours_prefill_s']:.1f} ms", ratio(t["ours_prefill_s"], pkg_pre)])
        if pkg_b1:
            rows.append(["rwkv package", "decode b1", f"{1 / pkg_b1:.0f}", f"{1e3 * pkg_b1:.2f} ms", ""])
        if "compiled_prefill_s" in t:
            rows.append(["ours compiled", f"prefill {n}", f"{n / t['compiled_prefill_s']:,.0f}",
                         f"{1e3 * t['compiled_prefill_s']:.1f} ms", ratio(t["compiled_prefill_s"], pkg_pre)])
        for key, name, batch in (("ours_eager_b1_s", "ours eager", 1),
                                 ("ours_graph_b1_s", "ours CUDA graph", 1),
                                 ("compiled_graph_b1_s", "ours compiled CUDA graph", 1),
                                 ("ours_eager_bN_s", "ours eager", results["batch"]),
                                 ("ours_graph_bN_s", "ours CUDA graph", results["batch"]),
                                 ("compiled_graph_bN_s", "ours compiled CUDA graph", results["batch"])):
            if key not in t:
                continue
            per_step = t[key]
            rows.append([name, f"decode b{batch}", f"{batch / per_step:,.0f}", f"{1e3 * per_step:.2f} ms",
                         ratio(per_step / batch, pkg_b1)])
        log(table(["impl", "what", "tokens/s", "time (per step)", "vs rwkv package"], rows))
    if results["profiles"]:
        log(table(["decoder", "wall ms per token", "kernel ms per token", "launches per token"],
                  [[name, f"{p['wall_ms'] / 8:.2f}", f"{p['per_token_ms']:.2f}", f"{p['launches'] / 8:.0f}"]
                   for name, p in results["profiles"].items() if "per_token_ms" in p]))
    if c:
        log("checks: " + ", ".join(f"{k} = {v:.2e}" if isinstance(v, float) else f"{k} = {v}"
                                   for k, v in c.items()))
    if results["rtf"]:
        log(table(["transcription", "decoder", "wall s", "audio s", "RTF", "tokens"],
                  [[f"batch {r['batch']}", r["decoder"], f"{r['seconds']:.3f}", f"{r['audio_s']:.0f}",
                    f"{r['rtf']:.4f}", r["tokens"]] for r in results["rtf"]]))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="run at 1.6B on the GPU")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run every code path at tiny shapes on the CPU (the package in 'cpu fp32', no "
                             "graphs); checks the script, measures nothing meaningful")
    parser.add_argument("--build-rwkv-only", metavar="DIR",
                        help="only build the rwkv package's CUDA extensions (DIR holds a tiny model file) "
                             "and exit; --gpu runs this in the background")
    parser.add_argument("--prefill", type=int, default=1024, help="prompt tokens of the prefill")
    parser.add_argument("--tokens", type=int, default=128, help="generated tokens per timed run of ours")
    parser.add_argument("--package-tokens", type=int, default=48,
                        help="generated tokens per timed run of the rwkv package (slow: host-bound)")
    parser.add_argument("--batch", type=int, default=32, help="the large decoding batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    parser.add_argument("--peers", default="rwkv", help="comma-separated peers (rwkv), or 'none'")
    parser.add_argument("--asr-batch", type=int, default=16, help="utterances in the batched transcription")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each utterance (s)")
    parser.add_argument("--no-rtf", dest="rtf", action="store_false", help="skip the transcription timing")
    parser.add_argument("--no-compiled", dest="compiled", action="store_false",
                        help="skip the compiled LLM's prefill, steps and transcription")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.build_rwkv_only:
        build_rwkv_extensions(args.build_rwkv_only)
        return
    if args.gpu == args.cpu_smoke:
        parser.error("choose one of --gpu and --cpu-smoke")
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs a CUDA device")
    device = "cuda" if args.gpu else "cpu"
    args.size, args.encoder_size = ("1.6B", "large") if args.gpu else ("tiny", "tiny")
    if args.cpu_smoke:
        args.prefill, args.tokens, args.package_tokens, args.batch = 16, 4, 4, 3
        args.repeats, args.asr_batch, args.seconds = 1, 2, 1.0
    args.peers = [] if args.peers == "none" else args.peers.split(",")
    results = {"env": environment(device), "command": " ".join(["python"] + sys.argv), "size": args.size,
               "prefill": args.prefill, "batch": args.batch, "timings": {}, "checks": {}, "profiles": {},
               "rtf": []}
    log(str(results["env"]))
    # A `timeout` around the run sends SIGTERM: exit through the finally below, which prints and
    # saves what was measured so far.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    with tempfile.TemporaryDirectory() as tmp:
        builder = None
        if device == "cuda" and "rwkv" in args.peers:
            env = dict(os.environ, RWKV_CUDA_ON="1")
            builder = subprocess.Popen([sys.executable, __file__, "--build-rwkv-only", tmp], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            if device == "cuda":
                results["bandwidth_gbs"] = copy_bandwidth() / 1e9
            start = time.perf_counter()
            model = bench_lm(args, device, Path(tmp), builder, results)
            if device == "cuda":
                # Each step reads every weight but the embedding once (one row of it is nothing).
                weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                              if n != "emb.weight")
                results["floor_ms"] = weights / (results["bandwidth_gbs"] * 1e9) * 1e3
            log(f"  LM part took {time.perf_counter() - start:.0f} s")
            if args.rtf:
                bench_rtf(args, device, Path(tmp), model, results)
            if args.compiled:
                bench_compiled(args, device, model, results)
                if args.rtf:
                    bench_rtf(args, device, Path(tmp), model, results, compiled=True)
        finally:
            if builder is not None and builder.poll() is None:
                builder.kill()
            synchronize(device)
            write_json(args.json, results)
            report(results)


if __name__ == "__main__":
    main()
