"""The arithmetic a computation runs in: one record per precision, resolved once per device.

Every precision is a :class:`PrecisionInfo` record in :data:`RECORDS` (its name, its help,
its autocast dtype, whether it turns TF32 on, whether it may take gradients, and what it
does on each kind of device). :func:`resolve_precision` turns the name a user asked for
into a :class:`Precision` for one device, once, at the entry of a command or API call;
training (:class:`~depthscape.training.fastpath.FastPath`), landscapes
(:class:`~depthscape.analysis.landscape.points.PointEvaluator`, the worker pools) and
Hessians (:class:`~depthscape.analysis.hessian.HessianOperator`) receive that object and
only call it: :meth:`Precision.forward` (the forward pass's autocast) and
:meth:`Precision.scope` (the TF32 switches, set as the precision says and restored on exit).
No module outside this one compares a precision's name; a new precision is one record here.

* ``fp32``: full float32; on CUDA with TF32 explicitly off (exact, comparable with the CPU);
* ``tf32``: float32 storage with TF32 tensor-core convolutions and matmuls (CUDA only; on
  the CPU it is ignored with a notice and fp32 runs);
* ``bf16``: bf16 autocast of the forward pass (and the loss), float32 weights. On CUDA
  where the GPU supports it (else fp32, with a notice); on the CPU where it has native
  bf16 instructions (AVX-512 BF16 or AMX, as oneDNN reports), else a one-line refusal.
* ``fp16``: float16 autocast of the forward pass, float32 weights, for computations that
  take no gradient (landscapes, trajectory contours). On CUDA; on the CPU where this
  PyTorch's CPU autocast takes float16 (else a one-line refusal). Training and Hessians
  refuse it in one line (``backward=True``; :meth:`Precision.forward` refuses it under
  autograd too): fp16 gradients need a gradient scaler, which depthscape does not build.

A name outside :data:`RECORDS` is refused, never replaced: each record says what it does
on every device type (CUDA, the CPU, and the others, such as MPS).
"""

from __future__ import annotations

import contextlib
import platform
import re
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from depthscape.core.errors import UserError
from depthscape.core.tf32 import set_tf32, tf32_enabled, tf32_scope  # noqa: F401  (re-exported)

#: The precision that runs where none is asked for (off CUDA), and whose results keep the
#: identities and file names they had before precisions were recorded.
DEFAULT = "fp32"


def _forward_only(precision: str) -> UserError:
    return UserError(f"--precision {precision} is for computations without gradients "
                     "(landscapes, trajectories); training and Hessians would need a gradient "
                     "scaler for it: use fp32, tf32 or bf16")


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 natively (oneDNN's check: AVX-512 BF16 or AMX)."""
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except (RuntimeError, AttributeError):
        return False


def cpu_description() -> str:
    """The CPU's model name and whether it has native bf16 (from /proc/cpuinfo or lscpu),
    e.g. ``Intel(R) Xeon(R) Processor; avx512_bf16 yes, amx_bf16 yes; oneDNN bf16 yes``:
    the line benchmarks and results print so a figure names the machine it comes from."""
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
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            torch.autocast(device_type="cpu", dtype=torch.float16)
        except (UserWarning, RuntimeError):
            return False
    return True


# ---------------------------------------------------------------------------- the records


def _cuda_bf16() -> bool:
    return bool(torch.cuda.is_bf16_supported())


def _elsewhere(name: str, device_type: str) -> tuple[str, str]:
    return DEFAULT, (f"--precision {name} acts only on CUDA and the CPU; ignored on "
                     f"{device_type}, which computes fp32")


def _fp32_on(device_type: str) -> tuple[str, str | None]:
    return "fp32", None


def _tf32_on(device_type: str) -> tuple[str, str | None]:
    if device_type == "cuda":
        return "tf32", None
    return DEFAULT, (f"--precision tf32 acts only on CUDA; ignored on {device_type}, which "
                     "computes fp32")


def _bf16_on(device_type: str) -> tuple[str, str | None]:
    if device_type == "cuda":
        if not _cuda_bf16():
            return DEFAULT, "ignored bf16 (this GPU has no bf16 support; fp32 runs)"
        return "bf16", None
    if device_type == "cpu":
        if not cpu_bf16_supported():
            raise UserError("--precision bf16: this CPU has no native bf16 support (oneDNN "
                            "finds neither AVX-512 BF16 nor AMX); use --precision fp32")
        return "bf16", None
    return _elsewhere("bf16", device_type)


def _fp16_on(device_type: str) -> tuple[str, str | None]:
    if device_type == "cuda":
        return "fp16", None
    if device_type == "cpu":
        if not cpu_fp16_supported():
            raise UserError("--precision fp16: this PyTorch's CPU autocast has no float16; "
                            "use --precision fp32")
        return "fp16", None
    return _elsewhere("fp16", device_type)


@dataclass(frozen=True)
class PrecisionInfo:
    """One precision: everything about it, in one place."""

    name: str
    summary: str  # a phrase for help texts
    on_device: Callable[[str], tuple[str, str | None]]  # device type -> (name that runs,
    # notice or None); a UserError where it cannot run there
    autocast: str | None = None  # the torch dtype the forward pass autocasts to
    tf32: bool = False  # TF32 convolutions and matmuls on CUDA
    forward_only: bool = False  # gradients would need a gradient scaler: no training, no Hessians
    channels_last_on_cuda: bool = False  # landscapes' default memory layout on CUDA
    caveat: str | None = None  # what a report says of results computed in it


#: Every precision, by name, in the order the command line offers them.
RECORDS: dict[str, PrecisionInfo] = {info.name: info for info in (
    PrecisionInfo("fp32", "full float32 (on CUDA with TF32 off: exact, comparable with the CPU)",
                  _fp32_on),
    PrecisionInfo("tf32", "float32 with TF32 tensor-core convolutions and matmuls (CUDA only)",
                  _tf32_on, tf32=True),
    PrecisionInfo("bf16", "bf16 autocast of the forward pass, float32 weights (CUDA; the CPU "
                  "with native bf16)", _bf16_on, autocast="bfloat16", channels_last_on_cuda=True,
                  caveat="bf16 is autocast with float32 weights: close to float32, not equal "
                  "to it"),
    PrecisionInfo("fp16", "float16 autocast of the forward pass, for computations without "
                  "gradients (landscapes, trajectories)", _fp16_on, autocast="float16",
                  forward_only=True, caveat="fp16 is autocast with float32 weights: close to "
                  "float32, not equal to it"),
)}
PRECISIONS = tuple(RECORDS)
#: Precisions for forward passes only: their gradients would need a gradient scaler.
FORWARD_ONLY = tuple(name for name, info in RECORDS.items() if info.forward_only)


def _record(name: str) -> PrecisionInfo:
    try:
        return RECORDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown precision {name!r}: use one of {', '.join(PRECISIONS)}"
                         ) from None


def precision_help(choices=PRECISIONS) -> str:
    """``fp32: ...; tf32: ...`` for a command's ``--precision`` help, from the records."""
    return "; ".join(f"{name}: {RECORDS[name].summary}" for name in choices)


@dataclass(frozen=True)
class Precision:
    """A precision resolved for one device type: what the forward passes, the Hessian-vector
    products and the training steps run in there. Made by :func:`resolve_precision` (or
    :func:`precision_named` for a recorded one); its users only call it."""

    name: str = DEFAULT
    device_type: str = "cpu"
    notice: str | None = field(default=None, compare=False)  # why it is not what was asked

    def __post_init__(self):
        _record(self.name)

    @property
    def info(self) -> PrecisionInfo:
        return RECORDS[self.name]

    @property
    def tag(self) -> str:
        """``""`` for the default (results from before precisions were recorded keep their
        names), else ``_NAME``: the part of an identity's file name it adds."""
        return "" if self.is_default else f"_{self.name}"

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT

    @property
    def forward_only(self) -> bool:
        return self.info.forward_only

    @property
    def tf32(self) -> bool:
        return self.info.tf32

    @property
    def caveat(self) -> str | None:
        return self.info.caveat

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return getattr(torch, self.info.autocast) if self.info.autocast else None

    def check_backward(self) -> Precision:
        """Itself, where gradients may be taken in it; a UserError where they may not."""
        if self.forward_only:
            raise _forward_only(self.name)
        return self

    def forward(self, cache_enabled: bool = True):
        """The forward pass's autocast context (a no-op where the precision has none; a
        UserError for a :data:`FORWARD_ONLY` one while autograd records). Autocast state is
        per thread: enter it in the thread that runs the forward pass."""
        if self.forward_only and torch.is_grad_enabled():
            raise _forward_only(self.name)
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=dtype,
                              cache_enabled=cache_enabled)

    def scope(self):
        """The TF32 switches set as this precision says (off but for tf32) inside the block,
        restored on exit, whatever they were before (:func:`tf32_scope`)."""
        return tf32_scope(self.tf32)

    def apply_global(self) -> None:
        """The TF32 switches set process-wide as this precision says (training's way: the
        process then trains in it; on CUDA only)."""
        if self.device_type == "cuda":
            set_tf32(self.tf32)

    def float_output(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` in float32 where autocast left it in a lower precision (losses and
        their sums are taken in float32)."""
        return tensor.float() if self.autocast_dtype is not None and \
            tensor.dtype == self.autocast_dtype else tensor

    def channels_last_default(self) -> bool:
        """Whether landscapes lay weights and inputs out channels-last by default here."""
        return self.device_type == "cpu" or (self.device_type == "cuda"
                                              and self.info.channels_last_on_cuda)

    def runtime_record(self) -> dict:
        """The keys a run's config records of it (``amp``: the older record of bf16)."""
        return {"precision": self.name, "amp": self.name if self.name == "bf16" else None}


def precision_named(name: str | None = None, device_type: str = "cpu") -> Precision:
    """The precision ``name`` (None: the default) on ``device_type`` as recorded, without
    asking whether this machine supports it (for reading what was computed, and for the
    engines' defaults)."""
    return Precision(name or DEFAULT, device_type)


def caveat_of(recorded: str | None) -> str | None:
    """What a report says of results a run or file records as computed in ``recorded``
    (``"bf16"``, or a run's ``"bf16, channels-last"``); None for exact ones and for names
    no record knows."""
    name = (recorded or "").split(",")[0].strip()
    return RECORDS[name].caveat if name in RECORDS else None


def resolve_precision(precision: str | None, device: torch.device | str,
                      default_cuda: str = DEFAULT, backward: bool = False) -> Precision:
    """The :class:`Precision` that runs on ``device`` for the one asked for, its
    :attr:`~Precision.notice` saying why where it is not that one.

    ``None`` is the device's default (``default_cuda`` on CUDA, fp32 elsewhere). A name
    outside :data:`RECORDS` is a ValueError (the CLIs offer only these); what a record
    cannot run on this device (bf16 on a CPU without native bf16, fp16 on a CPU whose
    autocast lacks it) and a :data:`FORWARD_ONLY` precision where ``backward`` (training,
    Hessians) are UserErrors.
    """
    device_type = torch.device(device).type
    asked = precision if precision is not None else (
        default_cuda if device_type == "cuda" else DEFAULT)
    info = _record(asked)
    if backward and info.forward_only:
        raise _forward_only(asked)
    runs, notice = info.on_device(device_type)
    return Precision(runs, device_type, notice)


def recorded_precision(runtime: dict | None) -> str:
    """The precision a run's saved ``runtime`` records (older runs record only ``amp``)."""
    runtime = runtime or {}
    return runtime.get("precision") or ("bf16" if runtime.get("amp") else DEFAULT)


def amp_alias(amp: bool, precision: str | None) -> str | None:
    """The precision a command line's ``--amp`` (the deprecated name of ``--precision bf16``)
    and ``--precision`` ask for together: resolved here, at the boundary, and nowhere else."""
    if not amp:
        return precision
    if precision not in (None, "bf16"):
        raise UserError(f"--amp means --precision bf16, not {precision}: pass one of them")
    return "bf16"
