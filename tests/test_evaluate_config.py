"""The evaluate and baselines config models: defaults, validation, documented fields."""

import pytest
from pydantic import BaseModel, ValidationError

from vpd.baselines.config import BaselinesConfig, TranscoderTrainConfig
from vpd.evaluate.config import EvaluateConfig


def all_models(model: type[BaseModel]):
    yield model
    for f in model.model_fields.values():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            yield from all_models(f.annotation)


@pytest.mark.parametrize("model", [EvaluateConfig, BaselinesConfig, TranscoderTrainConfig])
def test_every_field_documented(model):
    for m in all_models(model):
        missing = [n for n, f in m.model_fields.items() if not f.description]
        assert not missing, f"{m.__name__}: {missing}"


def test_defaults_and_validation():
    ev = EvaluateConfig()
    assert ev.pgd_steps == [20, 40, 80, 160, 320] and ev.thresholds == [0.0, 0.1, 0.5] and ev.pgd_step_size == 0.1
    with pytest.raises(ValidationError):
        EvaluateConfig(pgd_steps=[40, 20])
    with pytest.raises(ValidationError):
        EvaluateConfig(thresholds=[1.0])
    with pytest.raises(ValidationError):
        EvaluateConfig(typo=1)
    b = BaselinesConfig(n_latents=[256, 1024], k=[8, 16], train={"steps": 100})
    assert b.kinds == ["plt", "clt"] and b.inference == "threshold" and b.vpd_thresholds == [0.0, 0.1, 0.5]
    with pytest.raises(ValidationError):
        BaselinesConfig(n_latents=[256], k=[0], train={"steps": 1})
    with pytest.raises(ValidationError):
        BaselinesConfig(n_latents=[256], k=[8], train={"steps": 1, "lrr": 1})
