"""Tasks: one package per task with its LightningDataModule, LightningModule and metrics."""
