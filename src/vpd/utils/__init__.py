"""Shared helpers: atomic file output, checkpoints, seeding, threads and precision."""
