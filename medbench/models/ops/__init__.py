"""Pure-PyTorch versions of operators that upstream ships as CUDA kernels, and other operators PyTorch lacks."""
