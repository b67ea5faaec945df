"""CHORD core library: data, backbones, quantization, codes, hypernetworks and metrics."""

__version__ = "0.1.0"
