"""Benchmarks that print ratios against the raw ONNX Runtime floor (see README)."""
