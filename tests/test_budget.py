"""The time budget of a clip (pipeline/budget.py): the formula, and a call that is stopped at its limit."""

import os
import time

import pytest

from mirage_model.perception import PoseEstimationError
from pipeline.budget import TimeLimitExceeded, call_with_time_limit, clip_budget_s, no_progress_timeout_s
from pipeline.config import BudgetConfig


def test_the_budget_grows_with_frames_and_size_and_is_capped():
    b = BudgetConfig(base_s=30, per_frame_s=1.0, max_s=900)
    assert clip_budget_s(b, 33, (240, 320)) == 30 + 33
    assert clip_budget_s(b, 33, (120, 160)) == 30 + 33  # small clips get the 320 px rate
    assert clip_budget_s(b, 81, (704, 1280)) == 30 + 81 * 4  # 4x the side: 4x per frame
    assert clip_budget_s(b, 1000, (704, 1280)) == 900
    assert clip_budget_s(BudgetConfig(enabled=False), 33, (240, 320)) is None
    # the guard outlasts every clip of an input at its cap; no budget: Ray's own default
    assert no_progress_timeout_s(b, 3) > 3 * b.max_s and no_progress_timeout_s(b, None) > 8 * b.max_s
    assert no_progress_timeout_s(BudgetConfig(enabled=False), 3) is None


def _double(x):
    return 2 * x


def _fail():
    raise PoseEstimationError("no parallax in the child", reason="no_parallax", details={"pairs": [1]})


def _sleep(pid_file, seconds):
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)


def _crash():
    os._exit(3)


def _pid():
    return os.getpid()


def test_a_call_returns_its_result_or_raises_its_error():
    assert call_with_time_limit(_double, 21, time_limit_s=30) == 42
    assert call_with_time_limit(_pid, time_limit_s=30) != os.getpid()  # it ran in a child
    assert call_with_time_limit(_pid, time_limit_s=None) == os.getpid()  # no limit: in this process
    with pytest.raises(PoseEstimationError) as err:
        call_with_time_limit(_fail, time_limit_s=30)
    assert err.value.reason == "no_parallax" and err.value.details == {"pairs": [1]}


def test_a_call_over_its_limit_is_stopped_and_its_process_is_gone(tmp_path):
    pid_file = tmp_path / "pid"
    with pytest.raises(TimeLimitExceeded, match="the sleeper was stopped after 1.0 s") as err:
        call_with_time_limit(_sleep, str(pid_file), 600, time_limit_s=1.0, what="the sleeper")
    assert err.value.reason == "timeout"
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left sleeping
        os.kill(int(pid_file.read_text()), 0)
    with pytest.raises(TimeLimitExceeded, match="no time left"):
        call_with_time_limit(_double, 1, time_limit_s=0.0)


def test_a_child_that_dies_is_an_error_naming_the_work():
    with pytest.raises(RuntimeError, match="the crasher ended without a result .exit code 3."):
        call_with_time_limit(_crash, time_limit_s=30, what="the crasher")
