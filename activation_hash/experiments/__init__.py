"""The experiments: datasets, models, training, factor sweeps, the phase chart, plots, reports.

Import the submodules you need (``activation_hash.experiments.sweep`` etc.); this package
imports nothing heavy by itself.
"""
