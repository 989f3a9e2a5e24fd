"""ZeroGPU, Hugging Face's shared GPUs: a Space gets a GPU slice only while a function
decorated with ``spaces.GPU`` runs, in a worker process forked for it (its arguments and its
result are pickled across). Everywhere else the process has no GPU.

So on ZeroGPU the app runs on the CPU (``runtime.pick_device``: "auto" is the CPU there), and
the one self-contained GPU job, Compare's live benchmark, runs as a ``spaces.GPU`` task whose
duration is computed from the work. Outside ZeroGPU nothing here is used.
"""

from __future__ import annotations

from . import settings

# True inside a spaces.GPU task (set in the forked worker only): CUDA is there.
inside = False
_task = None


def available() -> bool:
    """Whether this process runs on ZeroGPU hardware (the runtime sets SPACES_ZERO_GPU)."""
    return settings.get().zero_gpu


def duration_s(estimate_s: float | None) -> int:
    """The task's GPU time to ask for: the estimate with room for loading the models, within
    ZeroGPU's limits (a shorter request waits less in ZeroGPU's queue)."""
    return int(min(max(15.0, 1.5 * (estimate_s or 40.0) + 10.0), 300.0))


def _in_task(fn, args: tuple, kwargs: dict, estimate_s: float | None):
    global inside
    inside = True
    return fn(*args, **kwargs)


def _task_duration(fn, args, kwargs, estimate_s):
    return duration_s(estimate_s)


def run_on_gpu(fn, *args, estimate_s: float | None = None, **kwargs):
    """``fn(*args, **kwargs)`` as a ZeroGPU task. ``fn`` is a module-level function (it is
    pickled by name), its arguments and result plain data (no callbacks, no CUDA tensors)."""
    global _task
    if _task is None:
        import spaces

        _task = spaces.GPU(_in_task, duration=_task_duration)
    return _task(fn, args, kwargs, estimate_s)
