"""Value-encoder training: typed config, DeepSpeed trainer, checkpoints/resume, launcher (see docs/training.md).

Importing this package is cheap; torch, diffusers and deepspeed load inside the functions that need them.
"""

from livo.training.config import TrainingConfig, load_training_config

__all__ = ["TrainingConfig", "load_training_config"]
