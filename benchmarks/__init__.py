"""Readers of the evaluation protocols' official data layouts (one file per benchmark)."""
