"""bnlib: Batch Normalization and its relatives in NumPy and PyTorch."""
