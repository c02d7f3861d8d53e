"""Benchmarks: `python -m bench [engine|proxlb|all]` (or ./dev.sh bench); each prints a table and writes JSON."""
