"""Reducers that turn a cohort's update matrix ``[K, d]`` into one update ``[d]``."""

from fedloom.aggregation.mean import weighted_mean, weighted_sum
from fedloom.aggregation.reducer import Reducer, ReduceContext, WeightedMean

__all__ = ["ReduceContext", "Reducer", "WeightedMean", "weighted_mean", "weighted_sum"]
