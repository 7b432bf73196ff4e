"""benchmarks/checkpoint_average.py: the uniform weight average of a target's checkpoints."""

import importlib.util
from pathlib import Path

import torch

from vpd.target.train import checkpoint_weights

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("checkpoint_average", ROOT / "benchmarks" / "checkpoint_average.py")
checkpoint_average = importlib.util.module_from_spec(spec)
spec.loader.exec_module(checkpoint_average)


def test_average_is_the_elementwise_mean_in_fp32():
    states = [{"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([[0.0]])},
              {"w": torch.tensor([3.0, 4.0]), "n": torch.tensor([[1.0]])},
              {"w": torch.tensor([5.0, 9.0], dtype=torch.bfloat16), "n": torch.tensor([[5.0]])}]
    avg = checkpoint_average.average_weights(states)
    assert avg["w"].dtype == torch.float32
    assert torch.equal(avg["w"], torch.tensor([3.0, 5.0]))
    assert torch.equal(avg["n"], torch.tensor([[2.0]]))


def test_one_state_averages_to_itself():
    state = {"w": torch.tensor([0.25, -1.5])}
    assert torch.equal(checkpoint_average.average_weights([state])["w"], state["w"])


def test_checkpoint_weights_are_the_model_entries_without_their_prefix():
    tensors = {"model.h.0.attn.q_proj.weight": torch.ones(2), "opt.0.exp_avg": torch.zeros(2),
               "rng.data": torch.zeros(1), "model.wte.weight": torch.full((2,), 3.0)}
    assert set(checkpoint_weights(tensors)) == {"h.0.attn.q_proj.weight", "wte.weight"}
    assert torch.equal(checkpoint_weights(tensors)["wte.weight"], torch.full((2,), 3.0))
