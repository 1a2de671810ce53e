"""exitbench: measure the early-exit potential of causal language models."""
