"""The run machinery of the training and evaluation commands: the method registry, the settings check, nnU-Net's
training and prediction runs, torchrun launches, the fine-tuning commands' shared body, the experiment's SLURM jobs."""
