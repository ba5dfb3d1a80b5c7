"""The projector of SLAM-ASR (Ma et al. 2024, "An Embarrassingly Simple Approach for LLM with
Strong ASR Capacity"): speech-encoder frames -> LLM input embeddings at a lower frame rate.

    linear: concatenate k consecutive frames (the incomplete tail group is dropped), then
            Linear(k * D, hidden) - ReLU - Linear(hidden, n_embd)
    conv:   Conv1d(D, D, kernel = stride = k) - ReLU, then Linear(D, hidden) - ReLU - Linear(hidden, n_embd)

With k = 5 the 50 frames/s of HuBERT / wav2vec 2.0 / WavLM become 10 LLM positions per second.
An output position i sees frames [i*k, (i+1)*k) only, so the `frame_counts // k` valid outputs of
an utterance never see its padded frames.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..config import PROJECTORS


class Projector(nn.Module):
    def __init__(self, input_dim: int, n_embd: int, hidden: int = 2048, downsample: int = 5,
                 kind: str = "linear"):
        super().__init__()
        if kind not in PROJECTORS:
            raise ValueError(f"projector must be one of {PROJECTORS}, got {kind!r}")
        for name, value in (("input_dim", input_dim), ("n_embd", n_embd), ("hidden", hidden),
                            ("downsample", downsample)):
            if value < 1:
                raise ValueError(f"projector: {name} must be positive, got {value}")
        self.kind = kind
        self.downsample = downsample
        self.input_dim = input_dim
        if kind == "conv":
            # The ReLU keeps the conv from collapsing into the first Linear (two linear maps in a row).
            self.conv = nn.Conv1d(input_dim, input_dim, kernel_size=downsample, stride=downsample)
            mlp_in = input_dim
        else:
            self.conv = None
            mlp_in = downsample * input_dim
        self.mlp = nn.Sequential(nn.Linear(mlp_in, hidden), nn.ReLU(), nn.Linear(hidden, n_embd))

    def forward(self, features: Tensor, frame_counts: Tensor) -> tuple[Tensor, Tensor]:
        """features [B, F, D], frame_counts [B] -> (embeddings [B, F // k, n_embd], counts [B])."""
        if features.dim() != 3 or features.shape[-1] != self.input_dim:
            raise ValueError(f"projector: features have shape {tuple(features.shape)}; expected "
                             f"[B, F, {self.input_dim}]")
        B, F, D = features.shape
        k = self.downsample
        kept = F // k * k
        x = features[:, :kept].to(self.mlp[0].weight.dtype)
        if self.conv is not None:
            x = nn.functional.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        else:
            x = x.reshape(B, kept // k, k * D)
        return self.mlp(x), frame_counts // k
