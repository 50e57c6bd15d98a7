"""Reliability and security fault suite (issue 7): bounded scripts that print JSON figures.

Each module runs one item of ``RELIABILITY.md`` at a reduced size (what CI runs through
``tests/reliability``) or at full size (``--full``). Run everything from the repository root
with ``python -m benchmarks.reliability.run_all --full``.
"""
