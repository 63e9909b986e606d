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

import importlib.util
from dataclasses import asdict, dataclass

import torch

from depthscape.core.runtime import (  # noqa: F401  (re-exported: the training switches' tools)
    PRECISIONS,
    autocast,
    cpu_bf16_supported,
    resolve_precision,
    set_tf32,
    tf32_enabled,
)


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
        # No cast cache under a graph (as PyTorch advises for graphed callables): each
        # weight is used once per forward here, so the cache saves nothing anyway.
        return autocast(self.device_type, self.arithmetic, cache_enabled=not self.cuda_graph)

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
    wanted = "bf16" if amp else precision  # --amp is the older name of --precision bf16
    if device.type == "cpu":
        return _cpu_fast_path(channels_last, compile, wanted, cuda_graph)
    asked = [name for name, on in (("--amp", amp), ("--channels-last", channels_last is True),
                                   ("--compile", compile),
                                   (f"--precision {precision}", precision not in (None, "fp32")),
                                   ("--cuda-graph", cuda_graph is True)) if on]
    if device.type != "cuda":
        notice = None
        if asked:
            notice = (f"{', '.join(asked)} {'acts' if len(asked) == 1 else 'act'} only on CUDA; "
                      f"ignored on {device.type}, so results are those of the plain path")
        return FastPath(device_type=device.type), notice
    precision, fallback = resolve_precision(wanted, device, default_cuda="bf16", backward=True)
    skipped = [fallback] if fallback else []
    amp = precision == "bf16"
    if compile and importlib.util.find_spec("triton") is None:
        compile = False
        skipped.append("ignored --compile (Triton is not installed)")
    notice = "; ".join(skipped) if skipped else None
    return FastPath(
        device_type="cuda", amp=amp, channels_last=channels_last is not False, compile=compile,
        cudnn_benchmark=True if cudnn_benchmark is None else cudnn_benchmark,
        fused_optimizer=True if fused_optimizer is None else fused_optimizer,
        precision=precision, cuda_graph=cuda_graph is not False,
    ), notice


def _cpu_fast_path(channels_last: bool | None, compile: bool, precision: str | None,
                   cuda_graph: bool | None) -> tuple[FastPath, str | None]:
    """The CPU's fast path: channels-last (default on) and bf16 where asked and supported."""
    precision, notice = resolve_precision(precision, "cpu", backward=True)  # bf16 unsupported, fp16: UserError
    asked = [name for name, on in (("--compile", compile), ("--cuda-graph", cuda_graph is True))
             if on]
    if asked:
        ignored = (f"{', '.join(asked)} {'acts' if len(asked) == 1 else 'act'} only on CUDA; "
                   "ignored on cpu")
        notice = ignored if notice is None else f"{notice}; {ignored}"
    return FastPath(device_type="cpu", amp=precision == "bf16",
                    channels_last=channels_last is not False, precision=precision), notice
