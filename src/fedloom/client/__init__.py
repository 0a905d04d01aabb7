"""Client-side local training."""

from fedloom.client.schedule import batch_schedule, client_seeds, cohort_schedule
from fedloom.client.trainer import TorchTrainer, evaluate_model

__all__ = ["TorchTrainer", "batch_schedule", "client_seeds", "cohort_schedule", "evaluate_model"]
