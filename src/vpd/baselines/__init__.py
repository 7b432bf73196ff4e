"""Transcoder baselines: BatchTopK per-layer (PLT) and cross-layer (CLT) transcoders, trained on
the target's MLP activations with local MSE, and spliced into the target in place of its MLPs.
"""
