"""The bench's cases, one module each; bench/cli.py runs them and writes bench/results/."""
