"""The fast path: the CUDA switches, and channels-last and bf16 on the CPU.

On CUDA, training always uses ``cudnn.benchmark`` and the fused SGD/Adam kernels; the
switches, with their CUDA defaults:

* ``precision``: ``bf16`` (default; autocast for the forward pass and loss, no loss
  scaling needed), ``tf32`` (fp32 with TF32 tensor-core matmuls/convolutions) or ``fp32``
  (TF32 explicitly off); ``amp`` is the older name of ``bf16``;
* ``channels_last``: NHWC memory layout for weights and inputs (default on);
* ``cuda_graph``: the training step captured once as one CUDA graph and replayed
  (default on; :mod:`depthscape.training.graph`);
* ``compile``: ``torch.compile`` of the training model (off; needs Triton).

On the CPU two of them act: ``channels_last`` (default on: NHWC is faster for these
convolutions in oneDNN; exact float32, only the memory layout differs) and ``precision
bf16`` (autocast, fp32 master weights; off by default and refused where the CPU has no
native bf16). TF32, the captured step and compile are CUDA-only and ignored there with a
one-line notice from :func:`fast_path_for`. On MPS every switch is ignored: the plain path.
Training and its evaluations use the :class:`FastPath` object.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class FastPath:
    """The switches in effect on one device (everything off off CUDA)."""

    device_type: str = "cpu"
    amp: bool = False  # bf16 autocast (precision "bf16")
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    fused_optimizer: bool = False
    precision: str = "fp32"  # fp32 | tf32 | bf16 (``amp`` implies bf16)
    cuda_graph: bool = False  # capture the training step as one CUDA graph

    @property
    def arithmetic(self) -> str:
        """The precision that runs: ``bf16`` where ``amp`` is on, else :attr:`precision`."""
        return "bf16" if self.amp else self.precision

    def autocast(self):
        """The autocast context of the forward pass (a no-op unless ``amp``)."""
        if self.arithmetic == "bf16":
            # No cast cache under a graph (as PyTorch advises for graphed callables): each
            # weight is used once per forward here, so the cache saves nothing anyway.
            return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16,
                                  cache_enabled=not self.cuda_graph)
        return contextlib.nullcontext()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Put ``model``'s weights in the chosen memory layout (in place); returns it."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the chosen memory layout."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def compiled(self, module: torch.nn.Module):
        """``torch.compile(module)`` where compile is on, else ``module`` itself."""
        return torch.compile(module) if self.compile else module

    def apply_global(self) -> None:
        """Process-wide settings (``cudnn.benchmark``) of this fast path."""
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        if self.device_type == "cuda":  # explicit: PyTorch's own default has TF32 convolutions on
            set_tf32(self.arithmetic == "tf32")

    def to_dict(self) -> dict:
        """The settings that describe (and may affect) a run's results, for its config."""
        data = asdict(self)
        data["amp"] = "bf16" if self.arithmetic == "bf16" else None
        data["precision"] = self.arithmetic
        return data


PRECISIONS = ("fp32", "tf32", "bf16")


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions, on or off (process-wide).

    Uses the ``fp32_precision`` settings where this PyTorch has them (as the landscape's
    ``full_float32`` does): PyTorch refuses to read the flags once the legacy
    ``allow_tf32`` and the new API have been mixed.
    """
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = "tf32" if enabled else "ieee"
        torch.backends.cuda.matmul.fp32_precision = "tf32" if enabled else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def tf32_enabled() -> bool:
    """Whether cuDNN convolutions may use TF32 now (either API)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return conv.fp32_precision == "tf32"
    return bool(torch.backends.cudnn.allow_tf32)


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 natively (oneDNN's check: AVX-512 BF16 or AMX)."""
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except (RuntimeError, AttributeError):
        return False


def fast_path_for(device: torch.device | str, amp: bool = False, channels_last: bool | None = False,
                  compile: bool = False, cudnn_benchmark: bool | None = None,
                  fused_optimizer: bool | None = None, precision: str | None = None,
                  cuda_graph: bool | None = False) -> tuple[FastPath, str | None]:
    """The fast path on ``device`` for the switches asked for, and a notice (or None).

    ``precision`` None means the device's default (bf16 on CUDA, fp32 on the CPU; bf16
    wherever ``amp``); ``channels_last`` None means the device's default (on for CUDA and
    the CPU), ``cuda_graph`` None the CUDA default (on). ``cudnn_benchmark`` and
    ``fused_optimizer`` default to on for CUDA (the benchmark script turns them off to
    measure the plain path). The notice names the switches that were asked for but
    cannot act here, and why; None where everything asked for applies.

    On the CPU, channels-last (exact float32, only the memory layout changes) and bf16
    autocast (``precision="bf16"``, where the CPU has native bf16: :func:`cpu_bf16_supported`;
    a UserError otherwise) apply; TF32, the captured step and compile are CUDA-only and
    ignored with the notice. Elsewhere (MPS) everything is off: the plain fp32 path.
    """
    device = torch.device(device)
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if amp:
        precision = "bf16"
    if device.type == "cpu":
        return _cpu_fast_path(channels_last, compile, precision, cuda_graph)
    asked = [name for name, on in (("--amp", amp), ("--channels-last", channels_last is True),
                                   ("--compile", compile),
                                   (f"--precision {precision}", precision in ("tf32", "bf16")),
                                   ("--cuda-graph", cuda_graph is True)) if on]
    if device.type != "cuda":
        notice = None
        if asked:
            notice = (f"{', '.join(asked)} {'acts' if len(asked) == 1 else 'act'} only on CUDA; "
                      f"ignored on {device.type}, so results are those of the plain path")
        return FastPath(device_type=device.type), notice
    skipped = []
    precision = precision or "bf16"  # --amp alone is bf16 too
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        precision = "fp32"
        skipped.append("bf16 (this GPU has no bf16 support; fp32 runs)")
    amp = precision == "bf16"
    if compile and importlib.util.find_spec("triton") is None:
        compile = False
        skipped.append("--compile (Triton is not installed)")
    notice = f"ignored {', '.join(skipped)}" if skipped else None
    return FastPath(
        device_type="cuda", amp=amp, channels_last=channels_last is not False, compile=compile,
        cudnn_benchmark=True if cudnn_benchmark is None else cudnn_benchmark,
        fused_optimizer=True if fused_optimizer is None else fused_optimizer,
        precision=precision, cuda_graph=cuda_graph is not False,
    ), notice


def _cpu_fast_path(channels_last: bool | None, compile: bool, precision: str | None,
                   cuda_graph: bool | None) -> tuple[FastPath, str | None]:
    """The CPU's fast path: channels-last (default on) and bf16 where asked and supported."""
    from depthscape.core.errors import UserError

    if precision == "bf16" and not cpu_bf16_supported():
        raise UserError("--precision bf16: this CPU has no native bf16 support (oneDNN finds "
                        "neither AVX-512 BF16 nor AMX); use --precision fp32")
    asked = [name for name, on in (("--compile", compile), ("--precision tf32", precision == "tf32"),
                                   ("--cuda-graph", cuda_graph is True)) if on]
    notice = None
    if asked:
        notice = (f"{', '.join(asked)} {'acts' if len(asked) == 1 else 'act'} only on CUDA; "
                  "ignored on cpu")
    bf16 = precision == "bf16"
    return FastPath(device_type="cpu", amp=bf16, channels_last=channels_last is not False,
                    precision="bf16" if bf16 else "fp32"), notice
