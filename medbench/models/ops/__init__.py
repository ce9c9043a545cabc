"""Operators of GP-VM backbones that upstream ships as CUDA kernels, written in PyTorch."""
