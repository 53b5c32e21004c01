"""A time budget per clip: no clip can stall a preprocessing run.

Each clip gets ``budget.base_s + budget.per_frame_s * frames * max(1, side / 320)`` seconds for
all its stages (``side``: the clip's longer side; capped at ``budget.max_s``). The stages spend it
in order; a clip whose stages have used it up is rejected as ``timeout`` with the seconds it took
(``pipeline.stages``). Structure from motion is the one stage whose cost is not bounded by the
clip's size -- a failing clip can try focal lengths, seeds and sizes for half an hour -- so it runs
in a child process that is killed when the clip's remaining time is up (``call_with_time_limit``):
COLMAP's own cancellation is honoured only between units of work, seconds to minutes late.

The child is a fork of the worker process, which has imported the pose code already, so a call
costs milliseconds, not an interpreter start.
"""

from __future__ import annotations

import multiprocessing
import pickle
import sys

from .config import BudgetConfig

__all__ = ["REFERENCE_SIDE", "TimeLimitExceeded", "call_with_time_limit", "clip_budget_s", "no_progress_timeout_s"]

REFERENCE_SIDE = 320
"""The longer side (pixels) at which ``budget.per_frame_s`` applies; larger clips get proportionally more."""


class TimeLimitExceeded(RuntimeError):
    """A call ran out of its time and was stopped (``reason``: the manifest code ``timeout``)."""

    reason = "timeout"

    def __init__(self, message: str):
        super().__init__(message)

    def __reduce__(self):  # picklable across Ray workers
        return (TimeLimitExceeded, (str(self),))


def clip_budget_s(budget: BudgetConfig, frames: int, size: tuple[int, int]) -> float | None:
    """Seconds a clip of ``frames`` frames of ``size`` (H, W) may spend in all its stages (None: no budget)."""
    if not budget.enabled:
        return None
    side_factor = max(1.0, max(size) / REFERENCE_SIDE)
    return min(budget.max_s, budget.base_s + budget.per_frame_s * frames * side_factor)


def no_progress_timeout_s(budget: BudgetConfig, clips_per_input: int | None) -> float | None:
    """Ray Data's no-progress guard for a run (None: keep Ray's default). A worker hands on an
    input's clips together, so the guard must outlast every clip of one input at its cap, plus
    decoding: ``clips_per_input`` (``clip.max_clips``; None counts 8) times ``max_s``, plus 10
    minutes. It then fires only on a real hang, never on a slow clip."""
    if not budget.enabled:
        return None
    return (clips_per_input or 8) * budget.max_s + 600.0


def _context():
    # fork: the child starts with everything this worker has imported, in milliseconds. (A fork
    # server would re-run the parent's main module in each child: Ray's worker script, or a
    # user's.) The child touches no Ray state, opens no connection, and ends with os._exit.
    return multiprocessing.get_context("fork")


def _child(conn, fn, args, kwargs) -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)  # OpenMP's thread pool does not survive a fork
    try:
        result = (True, fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - handed to the parent, which raises it
        result = (False, exc)
    # plain pickle, not the Connection's: torch registers reducers there that pass tensors as file
    # descriptors, which die with this process
    try:
        payload = pickle.dumps(result, protocol=5)
    except Exception as exc:  # noqa: BLE001 - an unpicklable exception: send its text
        payload = pickle.dumps((False, RuntimeError(f"{type(result[1]).__name__}: {result[1]} ({exc})")))
    try:
        conn.send_bytes(payload)
    finally:
        conn.close()


def call_with_time_limit(fn, *args, time_limit_s: float | None, what: str = "the call", **kwargs):
    """``fn(*args, **kwargs)``, stopped after ``time_limit_s`` seconds with ``TimeLimitExceeded``.

    ``None`` runs it in this process. Otherwise it runs in a forked child process that is killed
    at the limit (its result, or the exception it raises, must pickle; the exception is raised
    here). ``what`` names the work in the error message."""
    if time_limit_s is None:
        return fn(*args, **kwargs)
    if time_limit_s <= 0:
        raise TimeLimitExceeded(f"no time left for {what}")
    ctx = _context()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args, kwargs), daemon=True)
    proc.start()
    send.close()
    try:
        if not receive.poll(time_limit_s):
            raise TimeLimitExceeded(f"{what} was stopped after {time_limit_s:.1f} s, the clip's remaining budget")
        try:
            ok, value = pickle.loads(receive.recv_bytes())
        except EOFError:
            proc.join(5)
            raise RuntimeError(f"{what} ended without a result (exit code {proc.exitcode})") from None
        except Exception as exc:  # noqa: BLE001 - a result or an exception that cannot be rebuilt here
            raise RuntimeError(f"{what}: its result could not be read back ({type(exc).__name__}: {exc})") from exc
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        receive.close()
    if ok:
        return value
    raise value
