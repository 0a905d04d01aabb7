"""Reducers that turn a cohort's update matrix ``[K, d]`` into one update ``[d]``."""

from fedloom.aggregation.mean import weighted_mean, weighted_sum

__all__ = ["weighted_mean", "weighted_sum"]
