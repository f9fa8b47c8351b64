"""The training run-time every task shares: the command line (``cli``), callbacks, checkpoint files,
preemption, monitoring, output files, learning-rate schedules and optimiser construction.

Kept import-light: submodules are imported where they are used (``fwp.training.cli`` pulls in the
tasks; the model packages only need ``fwp.training.checkpointing``'s errors).
"""
