"""Memory layout of the VQ decoder's weights on a CPU.

oneDNN runs CPU convolutions in a channels-last (NHWC) layout. With transformers' default
NCHW weights every one of the 384 px decoder's ~60 convolutions reorders its input and
output around the kernel; with channels-last weights the activations stay NHWC from the
first convolution to the last (group norm, SiLU, nearest upsampling and the residual adds
all keep it), and the decoder's final `permute(0, 2, 3, 1)` to (N, H, W, C) becomes free.
bench/decode_layout.py measures it: about a fifth of the decode's time on a 2-core AMD
EPYC, the pixels within float rounding of the NCHW decode. Not applied on CUDA, where
nothing has been measured yet (bench/gpu.sh runs the GPU path as it is), nor in the
batch-invariant mode: GroupNorm's channels-last CPU kernel splits pixels between threads.
"""

from __future__ import annotations

from typing import Any

import torch


def use_channels_last(vqmodel: Any) -> None:
    """Store the VQ model's 4-d weights channels-last, in place (the codebook is 2-d)."""
    vqmodel.to(memory_format=torch.channels_last)
