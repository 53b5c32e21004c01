"""Measurement helpers shared by the benchmarks: wall time, peak memory, the machine, the command line."""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch


def _cpu_peak_from_profile(fn: Callable[[], object]) -> tuple[object, int]:
    """Peak of torch's CPU allocations during ``fn``, from the profiler's memory timeline.

    Each op reports what it allocated net of what it freed (``self_cpu_memory_usage``, booked at
    its end) and frees outside ops appear as ``[memory]`` events; their running sum is the live
    torch memory. Temporaries freed inside a single op are invisible, so this is a lower bound
    (exact for ops whose outputs are their only allocations).
    """
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():  # the profiler's C++ side logs a line at start and at stop
        prof.__enter__()
    try:
        out = fn()
    finally:
        with _quiet_stderr():
            prof.__exit__(None, None, None)
    events = []
    for e in prof.events():
        if e.name == "[memory]":
            events.append((e.time_range.start, e.cpu_memory_usage))
        elif e.self_cpu_memory_usage:
            events.append((e.time_range.end, e.self_cpu_memory_usage))
    events.sort(key=lambda x: x[0])
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return out, peak


@contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (C++ logging included) for the duration of the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory(fn: Callable[[], object], device: torch.device) -> tuple[object, int]:
    """Run ``fn`` and return (its result, peak bytes it allocated above the starting level).

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the torch profiler's allocation timeline
    (RSS high-water marks are synced lazily by the kernel and miss sub-MiB peaks).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, torch.cuda.max_memory_allocated(device) - base
    return _cpu_peak_from_profile(fn)


def timed(fn: Callable[[], object], device: torch.device, repeat: int = 1) -> tuple[object, float]:
    """(result of the last call, best wall time in seconds over ``repeat`` calls)."""
    best = float("inf")
    out = None
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return out, best


def interleaved(fns: list[Callable[[], object]], device: torch.device, rounds: int = 9, repeat: int = 3
                ) -> list[list[float]]:
    """``times[round][i]``: best of ``repeat`` calls of ``fns[i]``, every function once per round.

    Side by side: the machine's drift (other load, frequency) spreads over all the functions, so
    the median over rounds of a ratio of two of them is stable where timings taken minutes apart
    are not."""
    return [[timed(fn, device, repeat)[1] for fn in fns] for _ in range(rounds)]


def memcpy_seconds(nbytes: int, device: torch.device, repeat: int = 5) -> float:
    """Best time to copy ``nbytes`` on ``device`` (the bandwidth yardstick for readouts)."""
    src = torch.ones(max(1, nbytes), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    _, t = timed(lambda: dst.copy_(src), device, repeat)
    return t


def mib(n: float) -> float:
    return n / 2**20


def machine_line(device: torch.device) -> str:
    """One line naming the hardware the figures come from."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"CPU x{os.cpu_count()} ({torch.get_num_threads()} torch threads), torch {torch.__version__}"


def command_line(module: str, argv: list[str], write_docs: bool = True) -> str:
    """The command that ran ``python -m benchmarks.<module>`` with ``argv``, as a section publishes
    it: with ``--write-docs`` (added when missing), arguments quoted only where a shell needs it."""
    args = [a if re.fullmatch(r"[\w@%+=:,./\[\]-]+", a) else shlex.quote(a) for a in argv]
    if write_docs and "--write-docs" not in argv:
        args.append("--write-docs")
    return " ".join([f"python -m benchmarks.{module}", *args])


def sig(x: float, digits: int = 2) -> float | int:
    """``x`` rounded to ``digits`` significant digits; an int when no decimal is left (32.4 -> 32)."""
    if not math.isfinite(x) or x == 0:
        return x
    places = digits - 1 - math.floor(math.log10(abs(x)))
    r = round(x, places)
    return int(r) if places <= 0 else r
