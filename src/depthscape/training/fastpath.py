"""The GPU fast path: switches that act only on CUDA, so CPU results never change.

On CUDA, training always uses ``cudnn.benchmark`` and the fused SGD/Adam kernels; the
switches, with their CUDA defaults:

* ``precision``: ``bf16`` (default; autocast for the forward pass and loss, no loss
  scaling needed), ``tf32`` (fp32 with TF32 tensor-core matmuls/convolutions) or ``fp32``
  (TF32 explicitly off); ``amp`` is the older name of ``bf16``;
* ``channels_last``: NHWC memory layout for weights and inputs (default on);
* ``cuda_graph``: the training step captured once as one CUDA graph and replayed
  (default on; :mod:`depthscape.training.graph`);
* ``compile``: ``torch.compile`` of the training model (off; needs Triton).

Anywhere else (CPU, MPS) every switch is ignored and :func:`fast_path_for` returns a
one-line notice saying so, so the caller can print it: results there are exactly those of
the plain eager path. Landscape evaluation uses the same :class:`FastPath` object.
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


def fast_path_for(device: torch.device | str, amp: bool = False, channels_last: bool | None = False,
                  compile: bool = False, cudnn_benchmark: bool | None = None,
                  fused_optimizer: bool | None = None, precision: str | None = None,
                  cuda_graph: bool | None = False) -> tuple[FastPath, str | None]:
    """The fast path on ``device`` for the switches asked for, and a notice (or None).

    ``precision`` None means the device's default (bf16 on CUDA, or bf16 where ``amp``);
    ``channels_last`` and ``cuda_graph`` None mean the device's default (on for CUDA).
    ``cudnn_benchmark`` and ``fused_optimizer`` default to on for CUDA (the benchmark
    script turns them off to measure the plain path). The notice names the switches that
    were asked for but cannot act here, and why; None where everything asked for applies.
    Off CUDA everything is off and the arithmetic is fp32, exactly the plain path.
    """
    device = torch.device(device)
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
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
