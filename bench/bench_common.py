"""Helpers shared by bench_train.py and bench_decode.py: random models at real shapes, a random
HuBERT-shaped encoder folder, the measured matrix peak, timing, kernel profiles, tables."""

from __future__ import annotations

import gc
import json
import platform
import re
import statistics
import subprocess
import time
from datetime import date
from pathlib import Path

import torch

from conrwkv.model import RWKV, ModelConfig

# name -> (n_layer, n_embd): the RWKV-6 World sizes of the issue, 1.5B the RWKV-7 of the 1.6B's
# shape; "tiny" is the CPU smoke shape.
SIZES = {"1.6B": (24, 2048), "1.5B": (24, 2048), "3B": (32, 2560), "tiny": (2, 128)}
VOCAB = 65536


def log(message: str) -> None:
    """Print at once: a device call's output is read while it runs."""
    print(message, flush=True)


def environment(device: str) -> dict:
    info = {"date": str(date.today()), "torch": torch.__version__, "device": device,
            "machine": platform.processor() or platform.machine()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(), sms=props.multi_processor_count,
                    gpu_mib=props.total_memory // 2**20, cuda=torch.version.cuda)
        try:
            import triton
            info["triton"] = triton.__version__
        except ImportError:
            pass
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            info["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str) -> float:
    """bf16 matrix-product rate in FLOP/s, measured: 8192^3 on the GPU (random data, median of
    CUDA-event timings), 1024^3 by wall clock on the CPU (smoke runs only)."""
    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    if device == "cuda":
        import triton.testing
        ms = triton.testing.do_bench(lambda: a @ b, warmup=200, rep=1000, return_mode="median")
        seconds = ms * 1e-3
    else:
        seconds = median_seconds(lambda: a @ b, device, warmup=1, repeats=3)
    return 2 * n**3 / seconds


def median_seconds(fn, device: str, warmup: int, repeats: int) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup`, synchronising around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


@torch.no_grad()
def random_rwkv(size: str, device: str, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                vocab: int = VOCAB, **options) -> RWKV:
    """An RWKV-6 (or the `arch` of `options`) of the given size, built directly on `device`: the
    official initialisation (in float32: its orthogonal init needs a float32 QR), then every
    all-zero matrix (the output projections, channel-mix value and receptance, the LoRA
    down-projections) filled with N(0, 0.02), so that every layer contributes and no timing
    runs on zeros; then cast."""
    torch.manual_seed(seed)
    n_layer, n_embd = SIZES[size]
    config = ModelConfig(vocab_size=vocab, n_layer=n_layer, n_embd=n_embd, **options)
    with torch.device(device):
        model = RWKV(config)
    for name, p in model.named_parameters():
        if p.dim() >= 2 and not name.endswith("time_state") and not p.any():
            p.normal_(0.0, 0.02)
    return model.to(dtype)


def save_hubert_folder(folder: Path, size: str, dtype: torch.dtype = torch.bfloat16) -> Path:
    """A HuBERT-shaped encoder with random weights and its feature extractor, written with
    save_pretrained so that SpeechEncoder loads it by its real loading code. "large": 24 layers
    x 1024 (hubert-large-ls960-ft's shape, stable layer norm, attention mask); "tiny": 2 x 32."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    shape = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                 feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
    if size == "tiny":
        shape.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    torch.manual_seed(0)
    model = HubertModel(HubertConfig(**shape)).to(dtype)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=True)
    model.save_pretrained(folder)
    extractor.save_pretrained(folder)
    return folder


def encoder_flops(config, frames: int, samples: int) -> float:
    """Forward FLOP of a wav2vec 2.0-family encoder: 2 per multiply-add of the conv feature
    encoder (from the config's conv stack) and 2 x transformer parameters per frame."""
    flops, length, channels = 0.0, samples, 1
    for dim, kernel, stride in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
        length = (length - kernel) // stride + 1
        flops += 2.0 * length * kernel * channels * dim
        channels = dim
    layer = 4 * config.hidden_size**2 + 2 * config.hidden_size * config.intermediate_size
    flops += 2.0 * frames * (config.num_hidden_layers * layer + channels * config.hidden_size)
    return flops


# Kernel name -> category, first match wins (fla's WKV kernels are Triton kernels too).
CATEGORIES = [
    ("wkv", r"wkv6|chunk_rwkv6|chunk_gla|chunk_fwd_kernel|chunk_bwd_kernel|fused_recurrent|cumsum"),
    ("matmul", r"gemm|gemv|cutlass|xmma|nvjet|sm90_|sm80_|cublas|ampere_|hopper_"),
    ("loss", r"cross_entropy|log_softmax|nll_loss|logsumexp|softmax"),
    ("optimizer", r"adam|multi_tensor"),
    ("norm", r"layer_norm|group_norm|layernorm|groupnorm|rms_norm|_norm_"),
    ("fused (triton)", r"triton"),
    ("copy / cast / cat", r"copy|cat|memcpy|memset|fill|convert|transpose"),
    ("unfused elementwise (aten)", r"elementwise|vectorized|unrolled|reduce|index|scatter|gather|where"),
]


def categorize(name: str) -> str:
    lowered = name.lower()
    for category, pattern in CATEGORIES:
        if re.search(pattern, lowered):
            return category
    return "other"


def profile_kernels(fn, device: str, steps: int = 1) -> dict:
    """Device time of every kernel while fn() runs `steps` times (torch.profiler), grouped by
    category; per step, in ms."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    synchronize(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        synchronize(device)
    wall = (time.perf_counter() - start) / steps
    kernels: dict[str, list] = {}
    host: dict[str, float] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CPU and not event.is_user_annotation:
            host[event.name] = host.get(event.name, 0.0) + event.self_cpu_time_total / 1e3 / steps
        # Annotations (such as "Optimizer.step#AdamW.step") also appear on the device timeline,
        # as ranges around kernels: counting them would count those kernels twice.
        if event.is_user_annotation:
            continue
        if device == "cuda" and event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        if device != "cuda" and event.cpu_parent is not None:
            continue                       # CPU smoke: top-level ops stand in for kernels
        us = event.device_time_total if device == "cuda" else event.cpu_time_total
        entry = kernels.setdefault(event.name, [0.0, 0])
        entry[0] += us / 1e3 / steps
        entry[1] += 1
    groups: dict[str, float] = {}
    for name, (ms, _) in kernels.items():
        groups[categorize(name)] = groups.get(categorize(name), 0.0) + ms
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:15]
    host_top = sorted(host.items(), key=lambda kv: -kv[1])[:8]
    return {"wall_ms": wall * 1e3, "kernel_ms": sum(groups.values()), "host_ms": sum(host.values()),
            "host_top": [{"name": name[:110], "ms": ms} for name, ms in host_top],
            "launches": sum(count for _, count in kernels.values()) / steps,
            "groups": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
            "top": [{"name": name[:110], "ms": ms, "calls": count / steps, "category": categorize(name)}
                    for name, (ms, count) in top]}


def print_profile(title: str, prof: dict) -> None:
    total = prof["kernel_ms"] or 1.0
    print(f"\nProfile: {title}: wall {prof['wall_ms']:.2f} ms per step (under the profiler), kernels "
          f"{prof['kernel_ms']:.2f} ms ({prof['launches']:.0f} launches), host self time "
          f"{prof['host_ms']:.2f} ms; top host ops: "
          + ", ".join(f"{h['name']} {h['ms']:.1f}" for h in prof["host_top"][:5]))
    print("| category | ms per step | share of kernel time |")
    print("|---|---|---|")
    for name, ms in prof["groups"].items():
        print(f"| {name} | {ms:.2f} | {100 * ms / total:.1f}% |")
    print("| top kernels | ms per step | calls |")
    print("|---|---|---|")
    for k in prof["top"]:
        print(f"| `{k['name']}` ({k['category']}) | {k['ms']:.3f} | {k['calls']:.0f} |")


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | None, results: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2, default=str)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()
