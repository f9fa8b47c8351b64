"""Parity of fwp with the official code of the paper, layer by layer (float64)."""
