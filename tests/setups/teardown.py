"""Ending a torchrun test job without the interpreter's teardown racing gloo's worker threads."""

from __future__ import annotations

import gc
import os
import sys

import torch.distributed as dist


def finish() -> None:
    """Wait for every rank, destroy the process group, and leave the process with status 0.

    Call it once all results are written, with nothing left to run, after deleting the references to
    objects that hold the process group (a DDP wrapper, an FSDP2 model's device mesh): they are collected
    here so that ``destroy_process_group`` really frees it. The ranks meet at a barrier first, so none
    tears down its connections while another still uses them. The process then exits
    with ``os._exit`` after flushing its output: torch 2.13 can still abort (SIGABRT, "terminate called
    without an active exception") while the interpreter finalises gloo's threads, which failed one CI run
    after the work under test had finished.
    """
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
