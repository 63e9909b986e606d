"""The fast path: the CUDA switches, and channels-last and bf16 on the CPU.

On CUDA, training always uses ``cudnn.benchmark`` and the fused SGD/Adam kernels; the
switches, with their CUDA defaults:

* ``precision``: ``bf16`` (default; autocast for the forward pass and loss, no loss
  scaling needed), ``tf32`` (fp32 with TF32 tensor-core matmuls/convolutions) or ``fp32``
  (TF32 explicitly off), resolved once into a :class:`~depthscape.core.runtime.Precision`;
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
    Precision,
    cpu_bf16_supported,
    precision_named,
    resolve_precision,
    set_tf32,
    tf32_enabled,
)


@dataclass(frozen=True)
class FastPath:
    """The switches in effect on one device (everything off off CUDA)."""

    device_type: str = "cpu"
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    fused_optimizer: bool = False
    # resolved for device_type (a name is taken as resolved already); None: fp32 there
    precision: Precision | str | None = None
    cuda_graph: bool = False  # capture the training step as one CUDA graph

    def __post_init__(self):
        if not isinstance(self.precision, Precision):
            object.__setattr__(self, "precision", precision_named(self.precision, self.device_type))

    @property
    def arithmetic(self) -> str:
        """The name of the precision that runs (what a run's config records)."""
        return self.precision.name

    def autocast(self):
        """The autocast context of the forward pass (the precision's)."""
        # No cast cache under a graph (as PyTorch advises for graphed callables): each
        # weight is used once per forward here, so the cache saves nothing anyway.
        return self.precision.forward(cache_enabled=not self.cuda_graph)

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
        # explicit: PyTorch's own default has TF32 convolutions on
        self.precision.apply_global()

    def to_dict(self) -> dict:
        """The settings that describe (and may affect) a run's results, for its config."""
        data = {**asdict(self), **self.precision.runtime_record()}
        return {key: data[key] for key in ("device_type", "amp", "channels_last", "compile",
                                            "cudnn_benchmark", "fused_optimizer", "precision",
                                            "cuda_graph")}


def fast_path_for(device: torch.device | str, channels_last: bool | None = False,
                  compile: bool = False, cudnn_benchmark: bool | None = None,
                  fused_optimizer: bool | None = None, precision: str | None = None,
                  cuda_graph: bool | None = False) -> tuple[FastPath, str | None]:
    """The fast path on ``device`` for the switches asked for, and a notice (or None).

    ``precision`` None means the device's default (bf16 on CUDA, fp32 on the CPU);
    ``channels_last`` None means the device's default (on for CUDA and the CPU),
    ``cuda_graph`` None the CUDA default (on). ``cudnn_benchmark`` and
    ``fused_optimizer`` default to on for CUDA (the benchmark script turns them off to
    measure the plain path). The notice names the switches that were asked for but
    cannot act here, and why; None where everything asked for applies.

    On the CPU, channels-last (exact float32, only the memory layout changes) and bf16
    autocast (``precision="bf16"``, where the CPU has native bf16: :func:`cpu_bf16_supported`;
    a UserError otherwise) apply; TF32, the captured step and compile are CUDA-only and
    ignored with the notice. Elsewhere (MPS) everything is off: the plain fp32 path.
    """
    device = torch.device(device)
    resolved = resolve_precision(precision, device, default_cuda="bf16", backward=True)
    if device.type == "cpu":
        return _cpu_fast_path(channels_last, compile, resolved, cuda_graph)
    asked = [name for name, on in (("--channels-last", channels_last is True),
                                   ("--compile", compile),
                                   (f"--precision {precision}",
                                    not precision_named(precision).is_default),
                                   ("--cuda-graph", cuda_graph is True)) if on]
    if device.type != "cuda":
        notice = None
        if asked:
            notice = (f"{', '.join(asked)} {'acts' if len(asked) == 1 else 'act'} only on CUDA; "
                      f"ignored on {device.type}, so results are those of the plain path")
        return FastPath(device_type=device.type), notice
    skipped = [resolved.notice] if resolved.notice else []
    if compile and importlib.util.find_spec("triton") is None:
        compile = False
        skipped.append("ignored --compile (Triton is not installed)")
    notice = "; ".join(skipped) if skipped else None
    return FastPath(
        device_type="cuda", channels_last=channels_last is not False, compile=compile,
        cudnn_benchmark=True if cudnn_benchmark is None else cudnn_benchmark,
        fused_optimizer=True if fused_optimizer is None else fused_optimizer,
        precision=resolved, cuda_graph=cuda_graph is not False,
    ), notice


def _cpu_fast_path(channels_last: bool | None, compile: bool, precision: Precision,
                   cuda_graph: bool | None) -> tuple[FastPath, str | None]:
    """The CPU's fast path: channels-last (default on) and bf16 where asked and supported."""
    notice = precision.notice
    asked = [name for name, on in (("--compile", compile), ("--cuda-graph", cuda_graph is True))
             if on]
    if asked:
        ignored = (f"{', '.join(asked)} {'acts' if len(asked) == 1 else 'act'} only on CUDA; "
                   "ignored on cpu")
        notice = ignored if notice is None else f"{notice}; {ignored}"
    return FastPath(device_type="cpu", channels_last=channels_last is not False,
                    precision=precision), notice
