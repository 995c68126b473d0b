"""Tasks: example inputs, losses and evaluation sums of classification and causal LM."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from fxdnat import tasks
from fxdnat.data import DIGITS
from fxdnat.text import TextInfo

RECIPE = SimpleNamespace(label_smoothing=0.1, auxiliary_weight=0.4)


def test_examples_have_each_tasks_shape_and_type():
    image = tasks.Classification(10, 32).example(2)
    assert image.shape == (2, 3, 32, 32) and image.dtype == torch.float32
    tokens = tasks.CausalLM(256, 64).example(3)
    assert tokens.shape == (3, 64) and tokens.dtype == torch.int64
    sample = tasks.CausalLM(50, 8).sample(4, torch.Generator().manual_seed(0))
    assert sample.shape == (4, 8) and sample.min() >= 0 and sample.max() < 50


def test_the_task_comes_from_the_data_set_and_round_trips_through_the_model_section():
    lm = tasks.for_data(TextInfo("text:pydoc"))
    assert lm == tasks.CausalLM(256, 128)
    assert lm.model_fields() == {"task": "causal-lm", "vocab_size": 256, "context": 128}
    assert tasks.from_model({"spec": "zoo:gpt-mini", **lm.model_fields()}) == lm
    image = tasks.for_data(DIGITS)
    assert image.model_fields() == {"num_classes": 10, "input_size": 32}  # as before tasks
    assert tasks.from_model({"spec": "zoo:resnet20", "num_classes": 10, "input_size": 32}) == image


def test_classification_keeps_label_smoothing_and_the_auxiliary_head():
    torch.manual_seed(0)
    logits, aux, y = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    loss, main = tasks.Classification(10, 32).loss((logits, aux), y, RECIPE)
    want = F.cross_entropy(logits, y, label_smoothing=0.1) + 0.4 * F.cross_entropy(aux, y)
    torch.testing.assert_close(loss, want)
    assert main is logits


def test_causal_lm_loss_is_the_mean_over_every_position():
    torch.manual_seed(0)
    logits, y = torch.randn(2, 5, 7), torch.randint(7, (2, 5))
    loss, _ = tasks.CausalLM(7, 5).loss(logits, y, RECIPE)  # no label smoothing for an LM
    manual = -torch.stack(
        [logits[b, t].log_softmax(-1)[y[b, t]] for b in range(2) for t in range(5)]
    ).mean()
    torch.testing.assert_close(loss, manual)


@pytest.mark.parametrize(
    "task,logits,target",
    [
        (tasks.Classification(3, 8), [[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]], [0, 1]),
        (tasks.CausalLM(3, 2), [[[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], [[0, 1]]),
    ],
)
def test_sums_count_examples_or_tokens(task, logits, target):
    logits, target = torch.tensor(logits), torch.tensor(target)
    loss, correct, count = task.sums(logits, target).tolist()
    assert (correct, count) == (1.0, 2.0)  # the second prediction is wrong
    want = F.cross_entropy(logits.reshape(-1, 3), target.reshape(-1), reduction="sum").item()
    assert loss == pytest.approx(want)


def test_an_lm_reports_its_perplexity():
    assert tasks.CausalLM(256, 8).scores(math.log(4)) == {"perplexity": pytest.approx(4.0)}
    assert tasks.Classification(10, 32).scores(1.0) == {}
    assert tasks.perplexity(1e4) == math.inf and tasks.perplexity(None) is None


def test_a_zoo_model_of_another_task_is_refused_with_what_to_give():
    with pytest.raises(
        ValueError, match=r"zoo:gpt-mini is a causal language model .* --data text:pydoc"
    ):
        tasks.check_model(tasks.Classification(10, 32), "zoo:gpt-mini")
    with pytest.raises(ValueError, match=r"zoo:resnet20 is an image classifier"):
        tasks.check_model(tasks.CausalLM(256, 128), "zoo:resnet20")
    tasks.check_model(tasks.CausalLM(256, 128), "timm:resnet18")  # other sources cannot tell


def test_a_spec_without_data_is_built_for_its_own_task():
    assert tasks.for_spec("zoo:gpt-micro") == tasks.CausalLM(256, 128)
    assert tasks.for_spec("zoo:resnet20", num_classes=7) == tasks.Classification(7, None)
