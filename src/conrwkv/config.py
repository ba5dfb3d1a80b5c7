"""Configuration dataclasses. Each field carries its command-line help in `metadata["help"]`,
from which train.py generates its flags, so a flag cannot exist without help or a reader."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

# The option sets, each defined once here; the flags' choices and the code's checks use them.
ARCHITECTURES = ("x060", "x052", "x070")
# How papers and plots name them.
ARCHITECTURE_NAMES = {"x060": "RWKV-6", "x052": "RWKV-5.2", "x070": "RWKV-7"}
WKV_BACKENDS = ("auto", "torch", "cuda", "fla")
# The WKV7 op (RWKV-7): the torch backend, and fla's chunk_rwkv7 on CUDA; cuda is WKV6's kernel.
WKV7_BACKENDS = ("auto", "torch", "fla")
LR_SCHEDULES = ("exp", "cos", "linear", "const")
# torch.compile's modes (--compile_mode); reduce-overhead replays the compiled code from CUDA graphs.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
PROJECTORS = ("linear", "conv")
ENCODER_BATCHING = ("auto", "batch", "one_by_one")
LLM_TRAIN = ("frozen", "lora", "full")
# Every linear layer of an RWKV-6 (and 5.2) block: time-mix r, k, v, g, output and channel-mix
# k, v, r: the default --lora_targets.
LORA_TARGETS = ("att.receptance", "att.key", "att.value", "att.gate", "att.output",
                "ffn.key", "ffn.value", "ffn.receptance")
# Every linear layer of an RWKV-7 block (its gate is a LoRA of its own, g1 / g2, and its channel
# mix has no receptance): what the default targets mean for an x070 LLM.
X070_LORA_TARGETS = ("att.receptance", "att.key", "att.value", "att.output", "ffn.key", "ffn.value")


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


def _may_change(text: str, **extra) -> dict:
    """Help for a setting that a resumed run may change (train/resume.py): it extends the run or
    changes what is logged, saved, validated or evaluated, or how fast, never what the steps
    already taken would have computed."""
    return _help(text, resume_may_change=True, **extra)


def resume_may_change(cls) -> set[str]:
    """The fields of a configuration class that a resume may change."""
    return {f.name for f in fields(cls) if f.metadata.get("resume_may_change")}


@dataclass
class ModelConfig:
    """Shape and options of an RWKV-7, RWKV-6 or RWKV-5.2 language model.

    Zeros mean "derive the usual value": dim_att = n_embd, dim_ffn = 3.5 * n_embd rounded down to
    a multiple of 32 (4 * n_embd for x070), the low-rank sizes of the official x060 models (32
    and 64, doubled from n_embd 4096 up), and for x070 the four LoRA ranks that RWKV-LM's RWKV-v7
    trainer suggests, a multiple of 32 near f * sqrt(n_embd) (f = 2.5, 2.5, 1.7, 5 for w, a, v,
    g; at least 32). __post_init__ fills them in, so a printed config shows real numbers; the
    x070 ranks stay 0 for the other architectures, which have no such LoRAs.
    """

    vocab_size: int = field(default=65536, metadata=_help(
        "Vocabulary size (65536 for the RWKV World models; 2 for binary Markov chains)."))
    n_layer: int = field(default=2, metadata=_help("Number of RWKV blocks."))
    n_embd: int = field(default=128, metadata=_help("Model width C (residual stream size)."))
    dim_att: int = field(default=0, metadata=_help(
        "Time-mix width A, a multiple of head_size (0: equal to n_embd)."))
    dim_ffn: int = field(default=0, metadata=_help(
        "Channel-mix hidden width F (0: int(3.5 * n_embd) // 32 * 32)."))
    head_size: int = field(default=64, metadata=_help(
        "Size N of one WKV head; dim_att / head_size heads (64 in every official model)."))
    arch: str = field(default="x060", metadata=_help(
        "Block architecture: x060 (RWKV-6 Finch), x052 (RWKV-5.2 Eagle, e.g. RWKV-5 World 0.4B) or "
        "x070 (RWKV-7 Goose).",
        choices=ARCHITECTURES))
    conv_kernel: int = field(default=0, metadata=_help(
        "Con-RWKV causal depthwise convolution kernel on the time-mix input (0: off). It is a "
        "zero-initialised residual branch, so a pretrained model is unchanged at step 0."))
    token_shift: bool = field(default=True, metadata=_help(
        "Token shift: the time mix and the channel mix interpolate each token with the one before "
        "it. --no-token_shift gives them the token itself (an ablation: what the shift adds to "
        "the conv's view; no key of the .pth records it, the training record does)."))
    state_tuning: bool = field(default=False, metadata=_help(
        "Give every layer a trainable initial WKV state (time_state, zero-initialised)."))
    mix_rank: int = field(default=0, metadata=_help(
        "Rank of the x060 data-dependent token-shift LoRA per target (0: 32, or 64 from n_embd 4096)."))
    decay_rank: int = field(default=0, metadata=_help(
        "Rank of the x060 data-dependent decay LoRA (0: 64, or 128 from n_embd 4096)."))
    w_rank: int = field(default=0, metadata=_help(
        "x070: rank of the decay LoRA att.w1 / att.w2 (0: derived from n_embd)."))
    a_rank: int = field(default=0, metadata=_help(
        "x070: rank of the in-context learning rate LoRA att.a1 / att.a2 (0: derived from n_embd)."))
    v_rank: int = field(default=0, metadata=_help(
        "x070: rank of the value-residual LoRA att.v1 / att.v2 (0: derived from n_embd)."))
    g_rank: int = field(default=0, metadata=_help(
        "x070: rank of the gate LoRA att.g1 / att.g2 (0: derived from n_embd)."))
    wkv_backend: str = field(default="auto", metadata=_may_change(
        "WKV kernel: auto (cuda on GPU tensors, torch otherwise), torch, cuda or fla. x070 (WKV7) "
        "has auto and torch only for now.",
        choices=WKV_BACKENDS))
    grad_cp: bool = field(default=False, metadata=_may_change(
        "Gradient checkpointing: recompute each block in the backward pass to save memory."))

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        if self.dim_att == 0:
            self.dim_att = self.n_embd
        if self.dim_ffn == 0:
            self.dim_ffn = 4 * self.n_embd if self.arch == "x070" else int(self.n_embd * 3.5) // 32 * 32
        if self.arch == "x070":
            for name, factor in (("w_rank", 2.5), ("a_rank", 2.5), ("v_rank", 1.7), ("g_rank", 5.0)):
                if getattr(self, name) == 0:
                    setattr(self, name, max(32, round(factor * self.n_embd**0.5 / 32) * 32))
                if getattr(self, name) < 1:
                    raise ValueError(f"{name} must be positive (0: derived), got {getattr(self, name)}")
            # The package's RWKV_x070 (and RWKV-LM's trainer) take the time-mix width to be C.
            if self.dim_att != self.n_embd:
                raise ValueError(f"x070 needs dim_att == n_embd ({self.n_embd}), got {self.dim_att}")
            # Refused here, before a run has loaded data or started a trainer, not at the first step.
            if self.wkv_backend not in WKV7_BACKENDS:
                raise ValueError(f"wkv_backend {self.wkv_backend!r} (--wkv_backend) has no WKV7 "
                                 f"implementation for x070; choose one of {WKV7_BACKENDS}")
        if self.mix_rank == 0:
            self.mix_rank = 64 if self.n_embd >= 4096 else 32
        if self.decay_rank == 0:
            self.decay_rank = 128 if self.n_embd >= 4096 else 64
        for name in ("vocab_size", "n_layer", "n_embd", "dim_att", "dim_ffn", "head_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dim_att % self.head_size:
            raise ValueError(f"dim_att ({self.dim_att}) must be a multiple of head_size "
                             f"({self.head_size})")
        if self.conv_kernel < 0:
            raise ValueError(f"conv_kernel must be >= 0 (0 = off), got {self.conv_kernel}")

    @property
    def n_head(self) -> int:
        return self.dim_att // self.head_size


@dataclass
class TrainConfig:
    """Training run: data, optimisation, hardware, outputs. Shared by --task lm and --task asr."""

    proj_dir: str = field(default="output/run", metadata=_may_change(
        "Output folder: step-numbered weights (.pth), resumable checkpoints, logs, run config."))
    data_file: str = field(default="", metadata=_help(
        "LM: a binidx prefix (path without .bin/.idx) or a datanew.py folder (train/val + "
        "meta.json). ASR: a corpus (LibriSpeech split folder, save_to_disk folder or JSONL), or "
        "PATH:SPLIT for a folder holding several splits (a LibriSpeech root such as "
        "data/LibriSpeech:train-clean-100, or a save_to_disk DatasetDict); a path that exists "
        "as typed is a path, colons and all."))
    val_file: str = field(default="", metadata=_may_change(
        "Validation data of the same kind (LM: default the folder's val; ASR: a corpus as for "
        "data_file, e.g. data/LibriSpeech:dev-clean; also what --op eval scores without "
        "--eval_data)."))
    data_type: str = field(default="auto", metadata=_help(
        "LM sampling: windows (fixed ctx_len windows, magic-prime order), documents (one document "
        "per sample, masked padding), or auto (documents for datanew.py folders).",
        choices=("auto", "windows", "documents")))
    ctx_len: int = field(default=512, metadata=_help("Tokens per training sample (LM)."))
    micro_bsz: int = field(default=8, metadata=_help(
        "Samples per GPU (or CPU process) per micro-batch (one forward and backward pass)."))
    accumulate_grad_batches: int = field(default=1, metadata=_help(
        "Gradient accumulation: micro-batches per optimizer step, so a step sees micro_bsz x this x "
        "devices x num_nodes samples (the global batch). Every step count (max_steps, epochs, "
        "save_every, val_every, log_every, the LR schedule) counts optimizer steps; the loss is "
        "token-weighted over the whole window, as one batch of that size would be."))
    max_steps: int = field(default=1000, metadata=_may_change(
        "Optimizer steps to train for (ignored when epochs > 0); one step is "
        "accumulate_grad_batches micro-batches."))
    epochs: int = field(default=0, metadata=_may_change(
        "Train for this many passes over the data instead of max_steps (0: use max_steps)."))
    epoch_steps: int = field(default=0, metadata=_may_change(
        "Optimizer steps per epoch when epochs > 0 (0: computed from the data size, micro_bsz, "
        "devices and accumulate_grad_batches; an epoch's incomplete last window is a step too)."))
    lr_init: float = field(default=6e-4, metadata=_help("Learning rate after warmup."))
    lr_final: float = field(default=6e-5, metadata=_help("Learning rate at the last step."))
    lr_schedule: str = field(default="exp", metadata=_help(
        "Decay from lr_init to lr_final over the steps after warmup: exp (RWKV default), cos, "
        "linear, or const (stay at lr_init).", choices=LR_SCHEDULES))
    warmup_steps: int = field(default=10, metadata=_help(
        "Warmup steps: lr is multiplied by 0.01 + 0.99 * step / warmup_steps."))
    beta1: float = field(default=0.9, metadata=_help("Adam beta1."))
    beta2: float = field(default=0.99, metadata=_help("Adam beta2."))
    adam_eps: float = field(default=1e-8, metadata=_help("Adam epsilon."))
    weight_decay: float = field(default=0.0, metadata=_help(
        "Decoupled weight decay (AdamW) on weight matrices; 0 turns it off (RWKV default)."))
    grad_clip: float = field(default=1.0, metadata=_help("Gradient-norm clip (0: none)."))
    precision: str = field(default="auto", metadata=_may_change(
        "Lightning precision: auto (bf16-mixed on GPU, 32-true on CPU), 32-true, bf16-mixed, "
        "bf16-true.", choices=("auto", "32-true", "bf16-mixed", "bf16-true")))
    accelerator: str = field(default="auto", metadata=_may_change(
        "auto, cpu or gpu.", choices=("auto", "cpu", "gpu")))
    devices: str = field(default="auto", metadata=_may_change(
        "Devices per node: a count (e.g. 2) or auto (all GPUs, or 1 CPU process)."))
    num_nodes: int = field(default=1, metadata=_may_change("Machines in the run."))
    strategy: str = field(default="auto", metadata=_help(
        "Distribution strategy: auto, ddp, deepspeed_stage_1, deepspeed_stage_2, "
        "deepspeed_stage_3 (DeepSpeed needs GPUs and the deepspeed package).",
        choices=("auto", "ddp", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3")))
    compile: bool = field(default=False, metadata=_may_change(
        "torch.compile the whole RWKV as one graph before training (RWKV.compile_model: every block, "
        "the WKV op a node of it), for both tasks: fused elementwise kernels; compiling block by "
        "block gave 1.3x (1.6B) to 1.7x (12 x 768) faster LM training steps on an H100 "
        "(docs/benchmarks.md; the whole-model compile is not timed yet). The first steps of each "
        "input shape pay the compile time. --op eval / predict: the prefill and the token step "
        "compiled (one graph for every prefix length)."))
    compile_mode: str = field(default="default", metadata=_may_change(
        "With --compile: torch.compile's mode. reduce-overhead also replays the compiled forward "
        "and backward from CUDA graphs (a GPU only; one graph per input shape, so give --task asr "
        "a --length_bucket to keep the shapes few); max-autotune searches kernel configurations "
        "(long compiles).", choices=COMPILE_MODES))
    seed: int = field(default=42, metadata=_help("Random seed (model init, data order)."))
    head_tokens: str = field(default="all", metadata=_help(
        "LM from scratch: all (train every row of the output head), or data (only the rows of the "
        "tokens the training data holds; the others are zeroed and stay zero, which keeps the loss "
        "the exact full-vocabulary cross-entropy while the head's work shrinks to those rows: a 2 x "
        "128 model on the 22 tokens of digit strings with the World vocabulary took 0.32 s per "
        "step against 2.2, docs/results.md).",
        choices=("all", "data")))
    load_model: str = field(default="", metadata=_help(
        "Start from this official .pth (LM: fine-tune; ASR: the frozen LLM)."))
    save_every: int = field(default=0, metadata=_may_change(
        "Write weights and a resumable checkpoint every this many optimizer steps (0: at the end "
        "only), right after the step: a stop inside an accumulation window resumes from the last. "
        "Files are step-numbered and never deleted."))
    val_every: int = field(default=0, metadata=_may_change(
        "Validate every this many optimizer steps (0: only at the end). Lightning counts it in "
        "micro-batches over the whole run, so with accumulation it is exact while each epoch "
        "is whole accumulation windows; otherwise it falls within a window of the step."))
    val_batches: int = field(default=0, metadata=_may_change(
        "Batches per validation (0: the whole validation set)."))
    log_every: int = field(default=10, metadata=_may_change(
        "Log training metrics every this many optimizer steps."))
    num_workers: int = field(default=0, metadata=_may_change("DataLoader worker processes."))
    wandb: str = field(default="", metadata=_may_change(
        "Also log to Weights & Biases, into this project (empty: off; needs `pip install wandb`). "
        "Offline (files under proj_dir/wandb, `wandb sync` uploads them) unless WANDB_MODE is set "
        "or an API key is configured; a resumed run continues the same wandb run."))

    def __post_init__(self) -> None:
        if self.accumulate_grad_batches < 1:
            raise ValueError(f"--accumulate_grad_batches must be at least 1, got "
                             f"{self.accumulate_grad_batches}")
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"--compile_mode {self.compile_mode} is a mode of --compile, which is off; "
                             f"add --compile")


@dataclass
class AsrConfig:
    """The speech side of RWKV-ASR / SLAM-ASR: encoder, projector, prompt layout, decoding, data."""

    encoder: str = field(default="", metadata=_help(
        "Speech encoder: a local HuggingFace folder (HuBERT, wav2vec 2.0 or WavLM, saved with "
        "save_pretrained, with its preprocessor_config.json), or a hub id when online."))
    encoder_batching: str = field(default="auto", metadata=_help(
        "How the speech encoder meets a batch: auto (padded batches only for models that padding "
        "cannot change, a LayerNorm front end (feat_extract_norm 'layer') fed an attention mask; "
        "other models, e.g. wav2vec2-base and other GroupNorm ones, one utterance at a time), batch "
        "(always padded batches: faster, but a GroupNorm model's features then depend on the "
        "batch), or one_by_one (never batch).", choices=ENCODER_BATCHING))
    encoder_trainable: bool = field(default=False, metadata=_help(
        "Train the speech encoder too (default: frozen, as in SLAM-ASR and RWKV-ASR)."))
    projector: str = field(default="linear", metadata=_help(
        "Projector: 'linear' (concatenate `downsample` frames, Linear-ReLU-Linear) or 'conv' "
        "(Conv1d with kernel = stride = downsample, then the same MLP).", choices=PROJECTORS))
    downsample: int = field(default=5, metadata=_help(
        "Encoder frames merged into one LLM position (5: 50 frames/s -> 10 positions/s)."))
    projector_hidden: int = field(default=2048, metadata=_help("Hidden width of the projector MLP."))
    train_state: bool = field(default=True, metadata=_help(
        "Train every layer's initial WKV state (state tuning). --no-train_state keeps it at zero "
        "and trains the projector (and conv) only: the projector-only baseline."))
    separator: str = field(default="#", metadata=_help(
        "Text placed between the speech embeddings and the transcript (RWKV-ASR uses '#')."))
    length_bucket: int = field(default=0, metadata=_may_change(
        "Training and validation: pad each batch's LLM input (speech, separator, transcript) at the end to a "
        "multiple of this many positions (0: to the batch's longest row only), so that a compiled "
        "LLM (--compile, and the CUDA graphs of --compile_mode reduce-overhead) sees a few input "
        "lengths rather than one per batch. The model is causal and the loss reads only the "
        "transcript positions, so the padding changes no loss or gradient."))
    # The oracle-prefix probe (asr/oracle.py): is a failed run the pipeline or the LLM?
    oracle_prefix: bool = field(default=False, metadata=_help(
        "Probe: feed the transcript's own token embeddings in place of the projected speech, "
        "[emb(transcript)][emb(separator)] -> transcript, so the frozen LLM with its trained state "
        "(and conv) has only to copy its prefix: the best any projector could do with this LLM. "
        "No encoder or projector is loaded or trained (the corpora's audio is still read); --op "
        "eval scores it as usual, --op predict refuses it (it has no transcripts)."))
    oracle_noise: float = field(default=0.0, metadata=_help(
        "With --oracle_prefix: Gaussian noise added to each prefix embedding, as a multiple of that "
        "embedding's RMS (>= 0), in training and evaluation alike; at evaluation each utterance's "
        "noise is seeded by its transcript, so a score is reproducible."))
    oracle_dropout: float = field(default=0.0, metadata=_help(
        "With --oracle_prefix: probability in [0, 1) that a prefix token's embedding is replaced by "
        "zeros, in training and evaluation alike (seeded per utterance at evaluation, as the noise)."))
    lowercase: bool = field(default=True, metadata=_help(
        "Lowercase transcripts before tokenising them as targets (LibriSpeech is uppercase; the "
        "LLM has seen mostly mixed-case text; WER is scored case-insensitively anyway)."))
    beam: int = field(default=1, metadata=_may_change("Beam size for decoding (1: greedy)."))
    max_tokens_per_second: float = field(default=8.0, metadata=_may_change(
        "Decoding stops after this many tokens per second of audio (plus 10) if no end token."))
    lr_state_init: float = field(default=1.0, metadata=_help(
        "Learning rate of the trained initial states (time_state) after warmup; state tuning "
        "wants a far larger rate than the projector (lr_init)."))
    lr_state_final: float = field(default=0.01, metadata=_help(
        "Learning rate of the trained initial states at the last step."))
    # The LLM's own weights: frozen (state tuning), LoRA adapters (peft), or all trained.
    llm_train: str = field(default="frozen", metadata=_help(
        "What of the LLM's own weights trains: frozen (state tuning: only time_state, the conv "
        "and the projector), lora (peft LoRA adapters on --lora_targets, the base weights "
        "frozen) or full (every LLM weight, held in fp32). lora and full train with "
        "--lr_llm_init / --lr_llm_final.", choices=LLM_TRAIN))
    lora_rank: int = field(default=8, metadata=_help("--llm_train lora: rank r of each LoRA adapter."))
    lora_alpha: int = field(default=16, metadata=_help(
        "--llm_train lora: LoRA alpha; an adapter's update B @ A is scaled by alpha / rank."))
    lora_dropout: float = field(default=0.0, metadata=_help(
        "--llm_train lora: dropout on the LoRA branch's input while training (0: none)."))
    lora_targets: str = field(default=",".join(LORA_TARGETS), metadata=_help(
        "--llm_train lora: comma-separated name suffixes of the linear layers that get an "
        "adapter (peft's target_modules; 'att.key' matches blocks.N.att.key in every block). The "
        "default, every linear layer of an RWKV-6 block, means every linear layer of an RWKV-7 "
        "block (" + ",".join(X070_LORA_TARGETS) + ") for an x070 LLM."))
    lr_llm_init: float = field(default=1e-4, metadata=_help(
        "--llm_train lora / full: learning rate of the LLM's trained weights (optimizer group "
        "'llm': the LoRA matrices, or every LLM weight) after warmup."))
    lr_llm_final: float = field(default=1e-5, metadata=_help(
        "--llm_train lora / full: learning rate of the LLM's trained weights at the last step."))
    eval_data: str = field(default="", metadata=_may_change(
        "--op eval: comma-separated corpora to score, each a LibriSpeech split folder, a "
        "save_to_disk folder or a JSONL manifest, or PATH:SPLIT for a folder of several splits "
        "(data/LibriSpeech:test-clean,data/LibriSpeech:test-other). Reports name each by its "
        "split (or folder / file name), with parent folders added where two would share a name "
        "(default: --val_file)."))
    audio: str = field(default="", metadata=_may_change(
        "--op predict: comma-separated audio files or folders to transcribe."))
    asr_weights: str = field(default="", metadata=_may_change(
        "--op eval / predict / merge: the trained weights (state, projector, conv) to use "
        "(default: the newest asr-step*.pth in proj_dir)."))
    merge_out: str = field(default="", metadata=_may_change(
        "--op merge: the .pth to write (default: <weights stem>-merged-llm.pth beside the "
        "weights). An existing file is never overwritten: the merge stops with an error."))
    skip_bad_audio: bool = field(default=False, metadata=_may_change(
        "Skip (and count in the log) corrupt, empty or missing audio files instead of stopping."))
    min_duration: float = field(default=0.0, metadata=_help(
        "Training and validation data: drop utterances shorter than this (s; 0: no limit). "
        "--op eval ignores it (see eval_max_duration)."))
    max_duration: float = field(default=30.0, metadata=_help(
        "Training and validation data: drop utterances longer than this (s; 0: no limit). "
        "--op eval ignores it (see eval_max_duration)."))
    eval_max_duration: float = field(default=0.0, metadata=_may_change(
        "--op eval: score only utterances up to this long (s; 0: no limit, every utterance is "
        "scored). The summary states how many were scored and how many were left out, and why."))

    def __post_init__(self) -> None:
        if self.length_bucket < 0:
            raise ValueError(f"--length_bucket must be 0 (off) or a number of positions, got "
                             f"{self.length_bucket}")
