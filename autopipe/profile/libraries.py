"""What the device's libraries hold in a training process beyond any tensor: cuBLAS's workspaces.

# [Note: the libraries' workspaces]
torch gives every cuBLAS handle a workspace, taken from its caching allocator at the
handle's first matmul on a stream and kept until the process ends (``CublasHandlePool.cpp``
in ``aten/src/ATen/cuda``): 32 MiB on a Hopper GPU (compute capability 9.0), 8 MiB +
128 KiB elsewhere (``CUBLAS_WORKSPACE_CONFIG``), and 1 MiB more for cuBLASLt
(``CUBLASLT_WORKSPACE_SIZE``) where a matmul takes that path (a linear layer with a bias).
Handles are per thread, and a training step runs its matmuls on two: the forward on the
thread that calls the model, the backward on the autograd engine's thread for the device.
So a process that trains holds two workspaces, 65–66 MiB on an H100 or H200 (the
backward's matmuls need not take cuBLASLt), whatever its stages: on the H200 the GPU suite's one-process MLP trained about 67 MiB over a prediction
that left them out. No node's profile sees them (they exist before the first node is
timed), so a profile carries them apart (``Profile.library_bytes``): measured on CUDA by
``library_bytes`` below, from the device spec in an estimate (``DeviceSpec.library_bytes``),
0 on the CPU, where MKL's buffers are malloc'd memory like any other. The planner charges
them once per rank, to the first stage it runs (``Problem.library``), and the plan shows
them as ``memory.library``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def library_bytes(device: torch.device, dtype: torch.dtype) -> int:
    """The bytes a training process's libraries hold on ``device``: what one linear layer's
    forward and backward in ``dtype`` leave allocated once its tensors are freed, cuBLAS's
    workspaces dropped first so that they are made again (0 off CUDA)."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    before = torch.cuda.memory_allocated(device)
    x = torch.randn(64, 64, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(64, 64, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(64, device=device, dtype=dtype, requires_grad=True)
    # the backward's matmuls run on autograd's thread for the device
    grads = torch.autograd.grad(F.linear(x, w, b).sum(), (x, w, b))
    torch.cuda.synchronize(device)
    del x, w, b, grads
    return max(0, torch.cuda.memory_allocated(device) - before)
