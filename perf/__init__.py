"""Speed benchmarks, not evaluation sets (in face recognition a "benchmark" is usually the latter). Each
module times one part of the framework and prints its numbers beside a baseline measured in the same run
(the common way of doing the same thing), as ratios, so that a slow or busy machine slows both alike. Run
them from the repository root as `python -m perf.<name>`, e.g. `python -m perf.verification`; each
module's docstring says what it measures and which flags it takes, and `make bench` runs four of them.
"""
