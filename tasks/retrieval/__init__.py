"""Synthetic associative retrieval (Schlag et al. 2021, §6.1): the capacity and update settings."""
