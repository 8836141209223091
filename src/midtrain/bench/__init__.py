"""Benchmarks reported as ratios measured in one process (`midtrain bench mix|train`)."""
