"""Evaluation of a decomposition: sparsity (L0, alive, density), CE/KL per mask strategy, the PGD
attack, pretraining compute recovered, and the sparsity-vs-reconstruction Pareto table.

Every metric here is computed by the same functions for VPD and for the transcoder baselines, on
the same held-out windows (`TokenShard.eval_windows`).
"""
