"""The arithmetic a computation runs in: one list of precisions, one check, one autocast.

Training (:mod:`depthscape.training.fastpath`), landscapes, trajectories and sharpness all
take a precision from this list and apply it through these functions, so a precision is
spelled and switched in one place:

* ``fp32``: full float32; on CUDA with TF32 explicitly off (exact, comparable with the CPU);
* ``tf32``: float32 storage with TF32 tensor-core convolutions and matmuls (CUDA only; on
  the CPU it is ignored with a notice and fp32 runs);
* ``bf16``: bf16 autocast of the forward pass (and the loss), float32 weights. On CUDA
  where the GPU supports it (else fp32, with a notice); on the CPU where it has native
  bf16 instructions (AVX-512 BF16 or AMX, as oneDNN reports), else a one-line refusal.
* ``fp16``: float16 autocast of the forward pass, float32 weights, for computations that
  take no gradient (landscapes, trajectory contours). On CUDA; on the CPU where this
  PyTorch's CPU autocast takes float16 (else a one-line refusal). Training and Hessians
  refuse it in one line (``backward=True``; :func:`autocast` refuses it under autograd
  too): fp16 gradients need a gradient scaler, which depthscape does not build.

The module imports torch only inside its functions, so the command line can read
:data:`PRECISIONS` for its choices without loading torch.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from depthscape.core.errors import UserError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")

#: Precisions for forward passes only: their gradients would need a gradient scaler.
FORWARD_ONLY = ("fp16",)


def _forward_only(precision: str) -> UserError:
    return UserError(f"--precision {precision} is for computations without gradients "
                     "(landscapes, trajectories); training and Hessians would need a gradient "
                     "scaler for it: use fp32, tf32 or bf16")


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 natively (oneDNN's check: AVX-512 BF16 or AMX)."""
    import torch

    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except (RuntimeError, AttributeError):
        return False


def cpu_description() -> str:
    """The CPU's model name and whether it has native bf16 (from /proc/cpuinfo or lscpu),
    e.g. ``Intel(R) Xeon(R) Processor; avx512_bf16 yes, amx_bf16 yes; oneDNN bf16 yes``:
    the line benchmarks and results print so a figure names the machine it comes from."""
    import platform
    import re
    import subprocess
    from pathlib import Path

    text = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        try:
            text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            pass
    model = re.search(r"^(?:model name|Model name)\s*:\s*(.+)$", text, re.MULTILINE)
    flags = set(re.findall(r"\b(avx512_bf16|amx_bf16)\b", text))
    name = model.group(1).strip() if model else (platform.processor() or "unknown CPU")
    marks = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}"
                      for flag in ("avx512_bf16", "amx_bf16"))
    return f"{name}; {marks}; oneDNN bf16 {'yes' if cpu_bf16_supported() else 'no'}"


def cpu_fp16_supported() -> bool:
    """Whether this PyTorch's CPU autocast takes float16 (it warns and turns itself off
    where it does not)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            torch.autocast(device_type="cpu", dtype=torch.float16)
        except (UserWarning, RuntimeError):
            return False
    return True


def resolve_precision(precision: str | None, device: torch.device | str,
                      default_cuda: str = "fp32", backward: bool = False
                      ) -> tuple[str, str | None]:
    """The precision that runs on ``device`` for the one asked for, and a notice (or None).

    ``None`` is the device's default (``default_cuda`` on CUDA, fp32 elsewhere). A
    precision outside :data:`PRECISIONS` is a ValueError (the CLIs offer only these); bf16
    on a CPU without native bf16, fp16 on a CPU whose autocast lacks it, and a
    :data:`FORWARD_ONLY` precision where ``backward`` (training) are UserErrors.
    """
    import torch

    device = torch.device(device)
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if backward and precision in FORWARD_ONLY:
        raise _forward_only(precision)
    if device.type == "cuda":
        chosen = precision or default_cuda
        if chosen == "bf16" and not torch.cuda.is_bf16_supported():
            return "fp32", "ignored bf16 (this GPU has no bf16 support; fp32 runs)"
        return chosen, None
    if device.type == "cpu":
        if precision == "bf16":
            if not cpu_bf16_supported():
                raise UserError("--precision bf16: this CPU has no native bf16 support (oneDNN "
                                "finds neither AVX-512 BF16 nor AMX); use --precision fp32")
            return "bf16", None
        if precision == "fp16":
            if not cpu_fp16_supported():
                raise UserError("--precision fp16: this PyTorch's CPU autocast has no float16; "
                                "use --precision fp32")
            return "fp16", None
        if precision == "tf32":
            return "fp32", "--precision tf32 acts only on CUDA; ignored on cpu, which computes fp32"
        return "fp32", None
    if precision in ("tf32", "bf16", "fp16"):
        return "fp32", (f"--precision {precision} acts only on CUDA and the CPU; ignored on "
                        f"{device.type}, which computes fp32")
    return "fp32", None


def autocast(device_type: str, precision: str, cache_enabled: bool = True):
    """The autocast context of ``precision`` on ``device_type`` (a no-op but for bf16 and
    fp16; fp16 where autograd records, i.e. a gradient will be taken, is a UserError).

    Autocast state is per thread: enter it in the thread that runs the forward pass.
    """
    import torch

    if precision in FORWARD_ONLY and torch.is_grad_enabled():
        raise _forward_only(precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is not None:
        return torch.autocast(device_type=device_type, dtype=dtype, cache_enabled=cache_enabled)
    return contextlib.nullcontext()


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions, on or off (process-wide).

    Uses the ``fp32_precision`` settings where this PyTorch has them: PyTorch refuses to
    read the flags once the legacy ``allow_tf32`` and the new API have been mixed.
    """
    import torch

    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = "tf32" if enabled else "ieee"
        torch.backends.cuda.matmul.fp32_precision = "tf32" if enabled else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def tf32_enabled() -> bool:
    """Whether cuDNN convolutions may use TF32 now (either API)."""
    import torch

    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return conv.fp32_precision == "tf32"
    return bool(torch.backends.cudnn.allow_tf32)


@contextlib.contextmanager
def tf32_scope(enabled: bool = False):
    """TF32 on or off inside the block (off: full float32 on NVIDIA GPUs); restored after.

    TF32 (cuDNN's default for convolutions) rounds inputs to 10 mantissa bits: a surface
    would then differ from the CPU's by ~1e-3, so landscapes run with it off unless
    ``--precision tf32`` asks for it.
    """
    import torch

    settings = []
    for owner in (getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul):
        if owner is not None and hasattr(owner, "fp32_precision"):
            settings.append((owner, "fp32_precision", owner.fp32_precision,
                             "tf32" if enabled else "ieee"))
        elif owner is torch.backends.cuda.matmul:
            settings.append((owner, "allow_tf32", owner.allow_tf32, enabled))
    if not any(owner is not torch.backends.cuda.matmul for owner, *_ in settings):
        settings.append((torch.backends.cudnn, "allow_tf32", torch.backends.cudnn.allow_tf32,
                         enabled))
    try:
        for owner, name, _, value in settings:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, old, _ in settings:
            setattr(owner, name, old)
