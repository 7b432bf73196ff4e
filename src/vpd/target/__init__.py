"""The target: a small LLaMA-style language model (`model.py`) and its training stage (`train.py`)."""
