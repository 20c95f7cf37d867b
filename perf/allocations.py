"""Peak live memory of torch tensors and NumPy arrays over a call, from their allocators' own records: unlike a
process's RSS it does not count what malloc keeps after a free, nor library code and thread stacks, so it repeats
to the byte where RSS moved by hundreds of MiB from run to run (perf.memory, perf.partial_fc)."""
from __future__ import annotations

import tracemalloc
from typing import Callable, TypeVar

from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

T = TypeVar("T")


def peak_allocated(call: Callable[[], T]) -> tuple[T, int, int]:
    """(call's result, peak bytes of torch's CPU tensors, peak bytes of Python objects and NumPy arrays) above
    what was live when it started; NumPy reports its arrays' data to tracemalloc."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
            tracemalloc.reset_peak()  # after the profiler's start, whose own allocations are not the call's
            start, _ = tracemalloc.get_traced_memory()
            value = call()
            _, python_peak = tracemalloc.get_traced_memory()  # before the profiler builds its own records
    finally:
        if not tracing:
            tracemalloc.stop()
    # each allocation event carries the bytes the CPU allocator's profiling reporter counts as live after it: the
    # blocks it saw allocated and not yet freed, which may include blocks of an earlier profiled call still alive,
    # so the count before the first event is taken off the peak
    events, pending = [], list(profiler.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        pending.extend(event.children)
        if event.tag == _EventType.Allocation:
            events.append((event.start_time_ns, event.extra_fields.alloc_size, event.extra_fields.total_allocated))
    events.sort()
    tensors = max(total for *_, total in events) - (events[0][2] - events[0][1]) if events else 0
    return value, tensors, max(0, python_peak - start)
