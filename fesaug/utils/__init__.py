"""Shared plumbing of every stage: errors, atomic files, output locks, run logs, provenance,
devices, torchrun ranks, plots and lazy imports. Nothing here knows about faces."""
