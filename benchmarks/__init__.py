"""Side-by-side benchmarks of cropdoc against textbook pipelines (see BENCHMARKS.md).

Every script prints one JSON document on stdout. Ours and the reference run interleaved in
one process, so the ratios hold even on a shared, noisy machine.
"""
