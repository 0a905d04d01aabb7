"""Client-side local training."""

from fedloom.client.trainer import TorchTrainer, batch_schedule, evaluate_model

__all__ = ["TorchTrainer", "batch_schedule", "evaluate_model"]
