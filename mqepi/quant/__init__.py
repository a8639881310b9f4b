"""Quantization: ggml's types and rules, model profiles and quant maps, the llama.cpp
toolchain, the embedded assets, and the quantize step.

* :mod:`mqepi.quant.ggml`: ggml type vocabularies and byte arithmetic;
* :mod:`mqepi.quant.maps`: per-layer quant maps and model profiles, their expansion into
  per-tensor types;
* :mod:`mqepi.quant.toolchain`: llama.cpp built from a pinned registry package;
* :mod:`mqepi.quant.assets`: the embedded base model;
* :mod:`mqepi.quant.quantize`: map -> llama-quantize -> read back -> events.
"""
