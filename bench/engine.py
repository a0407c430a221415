"""Kept as an alias: the engine benchmarks (xor per-sample, the 64-128-64-10 minibatch MLP,
statistics on and off) are now workloads of bench/suite.py, which writes all of
bench/RESULTS.md with one command.

    python bench/engine.py [suite.py's options]   ==   python bench/suite.py [the same]
"""
from suite import main

if __name__ == "__main__":
    main()
