"""Preemption and time limits inside a submitit job: Slurm's signal turned into the work's
own graceful stop, then submitit's checkpoint/requeue.

submitit asks Slurm to send its jobs ``USR2`` (``$SUBMITIT_PREEMPT_SIGNAL``) before their
time limit, and a preempted job gets it too; submitit's own handler checkpoints the job's
callable (:class:`submitit.helpers.Checkpointable`: the same callable, same arguments) and
requeues it (``scontrol requeue``, global rank 0 alone). One mechanism for the study's
units (:mod:`depthscape.study.slurm`) and for one command as a job
(:mod:`depthscape.study.slurm_command`): :class:`GracefulRequeue`.
"""

from __future__ import annotations

import os
import signal
import sys


def usr_signal() -> int:
    """The signal submitit's jobs get before their time limit (USR2 unless set)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"),
                   signal.SIGUSR2)


class GracefulRequeue:
    """While open, submitit's signal goes to a training loop's SIGTERM handler where one
    holds it (the loop saves its exact resumable state at the next step boundary and stops
    with exit code 130), else straight to submitit's checkpoint-and-requeue (the work
    continues from what it has saved: a landscape grid's rows, measured runs). Once the
    stopped work has returned, :meth:`requeue` hands over to submitit, which requeues the
    job and exits (on global rank 0; on the other ranks it returns). Outside a submitit job
    (no handler of submitit's on the signal) nothing changes."""

    def __init__(self, name: str):
        self.name = name
        self.signalled: int | None = None
        self._signal = usr_signal()
        self._submitit = None
        self._term = None

    def __enter__(self) -> GracefulRequeue:
        self._submitit = signal.getsignal(self._signal)  # submitit's checkpoint-and-requeue
        self._term = signal.getsignal(signal.SIGTERM)
        if callable(self._submitit):
            signal.signal(self._signal, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        if callable(self._submitit):
            signal.signal(self._signal, self._submitit)

    def _on_signal(self, signum, frame) -> None:
        term = signal.getsignal(signal.SIGTERM)
        if self.signalled is None and callable(term) and term != self._term:
            # a training loop holds SIGTERM: it saves at the next step boundary and stops;
            # the requeue follows (requeue()), once its state is on disk
            self.signalled = signum
            print(f"depthscape: {self.name}: signal {signum}: saving to requeue",
                  file=sys.stderr, flush=True)
            term(signal.SIGTERM, frame)
        elif callable(self._submitit):
            self._submitit(signum, frame)

    def requeue(self, why: str) -> None:
        """After the work stopped on the signal (``why``: how it stopped): submitit's
        checkpoint, ``scontrol requeue`` and exit. Nothing where no signal came."""
        if self.signalled is not None and callable(self._submitit):
            print(f"depthscape: {self.name}: {why}: requeued", file=sys.stderr, flush=True)
            self._submitit(self.signalled, None)
