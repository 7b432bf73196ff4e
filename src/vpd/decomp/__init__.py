"""VPD engine: rank-one components, causal importance, stochastic and adversarial ablation."""
