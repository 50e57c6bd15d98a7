"""The reliability and security fault suite (issue 7): bounded scripts that print JSON figures.

A test suite, not benchmarks: each module injects one kind of fault of ``RELIABILITY.md``
(bad images, kill -9, a full disk, hostile files and uploads, NaN, bad CLI input) and
reports whether the bar is met. ``test_fault_*.py`` run them under pytest at the reduced
size CI uses; from the repository root, ``python -m tests.reliability.run_all [--full]``
runs every item and exits 1 when a bar fails. pytest collects only the ``test_*`` modules.
"""
