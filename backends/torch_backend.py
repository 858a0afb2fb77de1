"""The PyTorch backend: torch tensors (CPU or CUDA), computed with array-api-compat's torch
namespace.

Kernels: convolution and max pooling call PyTorch's own operators, forward and backward
(``aten.convolution_backward`` and ``max_pool2d_with_indices_backward`` are what autograd
calls), and the outer product ``torch.outer``. None of them records an autograd graph:
xpnn's tensors never require gradients.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import is_torch_array

from xpnn.backends.backend import probe_import

NAME = "torch"
INSTALL = ("pip install 'xpnn[torch]'  (CPU wheels: pip install torch --index-url "
           "https://download.pytorch.org/whl/cpu)")
MUTABLE = True


def probe() -> tuple[bool, str, str]:
    return probe_import("torch", INSTALL)[1]


def namespace():
    import array_api_compat.torch

    return array_api_compat.torch


def device(spec, xp):
    import torch

    # Tensors report an indexed device ("cuda:0"), and torch.device("cuda") does not
    # compare equal to it: ask torch where a tensor created there lands.
    return torch.empty(0, device=torch.device("cpu" if spec is None else spec)).device


def array_type(xp) -> type:
    import torch

    return torch.Tensor


is_array = is_torch_array


def device_of(array):
    return array.device


def from_numpy(host: np.ndarray, device):
    import torch

    return torch.from_numpy(host).to(device)


def astype_hint(dtype: str, name: str = "x") -> str:
    """How a user converts the array ``name`` to ``dtype`` (for error messages)."""
    return f"{name}.to(torch.{dtype})"


def synchronize(device) -> None:
    """Wait for the CUDA queue of ``device`` (nothing to wait for on the CPU)."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.synchronize(device)


def free_memory(device) -> str:
    """PyTorch's CUDA caching allocator gives back its unused blocks
    (``torch.cuda.empty_cache``); on the CPU, glibc's freed heap is returned."""
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.empty_cache()
        return f"emptied PyTorch's CUDA cache on {device}"
    from xpnn.backends.allocator import release_freed_memory

    if release_freed_memory():
        return "freed host memory returned to the system (malloc_trim)"
    return "no freed host memory to return"


def to_numpy(array) -> np.ndarray:
    import torch

    if array.dtype == torch.bfloat16:  # NumPy has no bfloat16: exact in float32
        array = array.float()
    return array.detach().cpu().numpy()


# -- kernels ----------------------------------------------------------------------------------


def conv2d(backend, x, w, bias, stride, padding, *, scale=None, negative_slope=None,
           dilation=(1, 1), groups=1):
    import torch.nn.functional as F

    geometry = {"stride": tuple(stride), "padding": tuple(padding),
                "dilation": tuple(dilation), "groups": groups}
    if scale is None:
        y = F.conv2d(x, w, bias, **geometry)
    else:
        y = F.conv2d(x, w, None, **geometry)
        y.mul_(scale.reshape(1, -1, 1, 1))
        if bias is not None:
            y.add_(bias.reshape(1, -1, 1, 1))
    if negative_slope is not None:
        y = F.leaky_relu_(y, negative_slope) if negative_slope else F.relu_(y)
    return y


def conv2d_train(backend, x, w, bias, stride, padding, *, dilation=(1, 1), groups=1):
    return conv2d(backend, x, w, bias, stride, padding, dilation=dilation, groups=groups), None


def conv2d_backward(backend, dy, x, w, stride, padding, saved, *, need_dx=True,
                    dilation=(1, 1), groups=1):
    import torch

    # (dy, x, w, bias sizes, stride, padding, dilation, transposed, output padding,
    # groups, which gradients)
    dx, dw, _ = torch.ops.aten.convolution_backward(
        dy.contiguous(), x, w, None, list(stride), list(padding), list(dilation), False,
        [0, 0], groups, [need_dx, True, False],
    )
    return (dx if need_dx else None), dw


def max_pool2d(backend, x, kernel_size, stride, padding):
    import torch.nn.functional as F

    return F.max_pool2d(x, tuple(kernel_size), tuple(stride), tuple(padding))


def max_pool2d_backward(backend, dy, x, y, kernel_size, stride, padding):
    import torch

    window = (list(kernel_size), list(stride), list(padding), [1, 1], False)
    _, indices = torch.ops.aten.max_pool2d_with_indices(x, *window)
    return torch.ops.aten.max_pool2d_with_indices_backward(dy.contiguous(), x, *window, indices)


def outer(backend, a, b):
    import torch

    return torch.outer(a, b)


KERNELS = {
    "conv2d": conv2d,
    "conv2d_train": conv2d_train,
    "conv2d_backward": conv2d_backward,
    "max_pool2d": max_pool2d,
    "max_pool2d_backward": max_pool2d_backward,
    "outer": outer,
}
