"""Pure-PyTorch operators that some architectures need and PyTorch lacks."""
