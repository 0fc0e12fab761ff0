"""Input checks shared by the op wrappers: every bad input becomes an SvEngineError at the boundary."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sv_engine.errors import SvEngineError

BACKENDS = ("auto", "cuda", "torch")
PADDING_MODES = ("zeros", "border")


def check_tensor(
    name: str,
    t: object,
    dtypes: Sequence[torch.dtype],
    shape: Sequence[int | None],
    device: torch.device | None = None,
) -> torch.Tensor:
    """Check ``t`` is a contiguous tensor of one of ``dtypes`` and of ``shape`` (None = any size).

    ``device``, if given, is the device every input of the op must share.
    """
    if not isinstance(t, torch.Tensor):
        raise SvEngineError(f"{name} must be a torch.Tensor, got {type(t).__name__}.", f"Pass {name} as a tensor.")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise SvEngineError(
            f"{name} has dtype {t.dtype}; expected one of {allowed}.", f"Convert it, e.g. {name}.to({dtypes[0]})."
        )
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape, strict=False)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise SvEngineError(f"{name} has shape {tuple(t.shape)}; expected {want}.", f"Reshape {name} to {want}.")
    if device is not None and t.device != device:
        raise SvEngineError(
            f"{name} is on {t.device} but the other inputs are on {device}.", "Move all inputs to one device."
        )
    if not t.is_contiguous():
        raise SvEngineError(f"{name} is not contiguous (strides {t.stride()}).", f"Pass {name}.contiguous().")
    return t


def check_same_size(what: str, sizes: dict[str, Sequence[int]]) -> None:
    """All named ``sizes`` are equal (e.g. the (T, H, W) of the grids, alpha and mask)."""
    first_name, first = next(iter(sizes.items()))
    for name, size in sizes.items():
        if tuple(size) != tuple(first):
            raise SvEngineError(
                f"{what}: {name} has size {tuple(size)} but {first_name} has {tuple(first)}.",
                f"Give every input the same {what}.",
            )


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise SvEngineError(f"{name}={value!r} is not supported.", f"Use one of {', '.join(map(repr, choices))}.")


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"cuda"`` or ``"torch"``: ``"auto"`` runs the CUDA kernel on CUDA tensors, else the reference."""
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        return "cuda" if device.type == "cuda" else "torch"
    if backend == "cuda" and device.type != "cuda":
        raise SvEngineError(
            f"backend='cuda' needs CUDA tensors, but the inputs are on {device}.",
            "Move the inputs to a GPU (tensor.cuda()) or use backend='auto' / 'torch'.",
        )
    return backend


def aligned(t: torch.Tensor, nbytes: int = 16) -> torch.Tensor:
    """``t`` itself when its data pointer is ``nbytes``-aligned (the kernels load 16-byte vectors), else a copy.

    Fresh torch allocations are always aligned; only views into the middle of a tensor are not.
    """
    return t if t.data_ptr() % nbytes == 0 else t.clone()


def tracing() -> bool:
    """Whether a graph is being traced (torch.compile, torch.export, ONNX export, TorchScript): the
    fused ops then run their torch form, so exported graphs keep the standard operators."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
