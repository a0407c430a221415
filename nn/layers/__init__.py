"""Layers: one module per layer type, each with forward -> (out, cache) and backward -> (dx, grads)."""
