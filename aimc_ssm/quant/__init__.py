"""Quantization (PTQ and QAT from one precision specification), hardware metrics, bit search, pruning.

Imports `core`'s model but never its training: training quantized models is `aimc_ssm.cache`'s."""
