"""`make bench`: seqserve against its ceilings and against what a user would run instead, in one run.

Run as `python -m bench.run` from the repository root; see bench/README.md for the scenarios and figures.
"""
