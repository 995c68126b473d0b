"""What a network is trained to do: image classification or causal language modelling.

A task supplies what the engine, ``eval``, ``export``, ``render`` and the reports would
otherwise assume about images: the example input a network is traced and costed on, the sizes
a checkpoint stores to rebuild it, the training loss, and the sums an evaluation adds up. The
task is chosen by the data set (``text:*`` → causal LM, every other → classification) and stored
in the checkpoint's model section, so everything that reads a checkpoint rebuilds it
(:func:`from_model`).

Scores: ``test_loss`` is the mean cross-entropy in nats per example (classification) or per
token (LM); ``test_acc`` the share of examples classified right, or of next tokens predicted
right (the argmax). An LM's headline is its validation loss and perplexity, exp(loss).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F

TaskName = Literal["classification", "causal-lm"]
TASKS: tuple[TaskName, ...] = get_args(TaskName)
"""The tasks, as a checkpoint's ``model.task`` names them (absent: classification)."""


class Task(ABC):
    """What a network computes, with the sizes that fix its input and output."""

    name: ClassVar[TaskName]
    fields: ClassVar[tuple[str, ...]]
    """The sizes a checkpoint's model section stores for this task (positive integers)."""

    @abstractmethod
    def example(self, batch: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
        """An input of ``batch`` examples for tracing, shapes and FLOPs (values do not matter)."""

    @abstractmethod
    def sample(self, batch: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """An input of random values (noise images, random token ids), on the CPU: to compare
        two networks' outputs on."""

    @abstractmethod
    def build_arguments(self) -> dict[str, Any]:
        """The keywords :func:`fxdnat.specs.build_model` takes for this task's sizes."""

    @abstractmethod
    def loss(self, output: Any, target: torch.Tensor, recipe: Any) -> tuple[torch.Tensor, Any]:
        """(training loss, a 0-dim mean, as the recipe weighs it; the main logits)."""

    @abstractmethod
    def describe(self) -> str:
        """The sizes in words: "10 classes at 32 px", "256 tokens, context 128"."""

    def model_fields(self) -> dict[str, Any]:
        """What the checkpoint's model section holds of the task: its name and sizes."""
        return {"task": self.name, **{f: getattr(self, f) for f in self.fields}}

    def resolved(self, built: Any) -> Task:
        """This task with the sizes a built model resolved (a default input size)."""
        return self

    def tally(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(correct predictions, predictions), float64 (2,): argmax over the last dimension."""
        correct = (logits.argmax(-1) == target).sum().double()
        return torch.stack([correct, correct.new_tensor(target.numel())])

    def sums(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        """An evaluation batch's (summed cross-entropy, correct predictions, predictions),
        float64 (3,), of the main logits; divide the first two by the last."""
        logits = main_logits(output).float()
        loss = F.cross_entropy(logits.flatten(0, -2), target.flatten(), reduction="sum")
        return torch.cat([loss.double().reshape(1), self.tally(logits, target)])

    def scores(self, loss: float | None) -> dict[str, float | None]:
        """Numbers the mean test loss gives beside ``test_loss`` (an LM: its perplexity)."""
        return {}


@dataclass(frozen=True)
class Classification(Task):
    """An image classifier: (B, 3, S, S) float images → (B, num_classes) logits, trained on
    cross-entropy with the recipe's label smoothing and auxiliary head."""

    num_classes: int
    input_size: int | None  # None: the model's own (resolved when it is built)

    name: ClassVar[TaskName] = "classification"
    fields: ClassVar[tuple[str, ...]] = ("num_classes", "input_size")

    def example(self, batch: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
        if self.input_size is None:
            raise ValueError("the input size is not known before the model is built")
        return torch.zeros(batch, 3, self.input_size, self.input_size, device=device)

    def sample(self, batch: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(self.example(batch).shape, generator=generator)

    def build_arguments(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "input_size": self.input_size}

    def model_fields(self) -> dict[str, Any]:
        # no "task" entry: the sections of checkpoints written before tasks read the same
        return {"num_classes": self.num_classes, "input_size": self.input_size}

    def resolved(self, built: Any) -> Task:
        return dataclasses.replace(self, num_classes=built.num_classes, input_size=built.input_size)

    def loss(self, output: Any, target: torch.Tensor, recipe: Any) -> tuple[torch.Tensor, Any]:
        logits, aux = _split(output)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=recipe.label_smoothing)
        if aux is not None and recipe.auxiliary_weight > 0:
            loss = loss + recipe.auxiliary_weight * F.cross_entropy(aux.float(), target)
        return loss, logits

    def describe(self) -> str:
        return f"{self.num_classes} classes at {self.input_size} px"


@dataclass(frozen=True)
class CausalLM(Task):
    """A causal language model: (B, T) int64 token ids → (B, T, vocab_size) logits of each next
    token, trained on the mean cross-entropy over every position."""

    vocab_size: int
    context: int  # tokens of one example

    name: ClassVar[TaskName] = "causal-lm"
    fields: ClassVar[tuple[str, ...]] = ("vocab_size", "context")

    def example(self, batch: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.zeros(batch, self.context, dtype=torch.long, device=device)

    def sample(self, batch: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(self.vocab_size, (batch, self.context), generator=generator)

    def build_arguments(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "context": self.context}

    def resolved(self, built: Any) -> Task:
        # an hf: model says what its logits score (fxdnat.hf): a masked or seq2seq model sees
        # the token it would be asked to predict, so next-token training would learn to copy
        check_causal(getattr(built.model, "objective", "causal"), built.spec)
        return self

    def loss(self, output: Any, target: torch.Tensor, recipe: Any) -> tuple[torch.Tensor, Any]:
        logits = main_logits(output)
        # (B, T, V) → (B·T, V): every position predicts its next token
        loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten())
        return loss, logits

    def scores(self, loss: float | None) -> dict[str, float | None]:
        return {"perplexity": perplexity(loss)}

    def describe(self) -> str:
        return f"{self.vocab_size} tokens, context {self.context}"


def check_causal(objective: str, name: str) -> None:
    """Refuse a language model that is not causal (fxdnat.hf's objectives): a masked or
    seq2seq model's logits at t score token t, which it reads, so next-token training would
    teach it to copy.

    Raises:
        ValueError: names the model and what to train instead."""
    if objective != "causal":
        raise ValueError(
            f"{name} is a {objective} language model: its logits at t score token t, which it "
            "reads, so next-token training on text would teach it to copy; train a causal model "
            "(a decoder-only hf:, e.g. hf:tiny-llama, or zoo:gpt-mini)"
        )


def perplexity(loss: float | None) -> float | None:
    """exp(mean cross-entropy in nats); None for None, inf past what a float holds."""
    if loss is None:
        return None
    return math.exp(loss) if loss < 700 else math.inf


def for_data(info: Any) -> Task:
    """The task a data set trains: a text data set's (fxdnat.text.TextInfo) is causal
    language modelling at its vocabulary and context; an image data set's is classification."""
    if hasattr(info, "vocab_size"):
        return CausalLM(info.vocab_size, info.context)
    return Classification(info.num_classes, info.input_size)


def from_model(model: dict[str, Any]) -> Task:
    """The task a checkpoint's model section stores (no ``task``: classification, as every
    checkpoint written before tasks). The sizes must have been checked (fxdnat.checkpoint)."""
    if model.get("task", "classification") == CausalLM.name:
        return CausalLM(model["vocab_size"], model["context"])
    return Classification(model["num_classes"], model["input_size"])


def for_spec(spec: str, *, num_classes: int = 10, input_size: int | None = None) -> Task:
    """The task ``spec`` is built for when no data set says: a zoo language model's reads
    bytes (fxdnat.text's vocabulary and context); every other model classifies
    ``num_classes`` at ``input_size`` (None: its own)."""
    from fxdnat import text, zoo  # lazy: the zoo's models load only when named
    from fxdnat.specs import parse_spec

    source, name = parse_spec(spec)
    if source == "zoo" and zoo.model_info(name).task == CausalLM.name:
        return CausalLM(text.VOCAB_SIZE, text.CONTEXT)
    return Classification(num_classes, input_size)


def task_class(name: str) -> type[Task]:
    """The Task of ``name`` (one of :data:`TASKS`)."""
    return {"classification": Classification, "causal-lm": CausalLM}[name]


def check_model(task: Task, spec: str) -> None:
    """Refuse a zoo model built for another task than ``task`` (other sources cannot tell).

    Raises:
        ValueError: names the model's task and the data set it needs.
    """
    from fxdnat import zoo  # lazy: the zoo's models load only when named
    from fxdnat.specs import parse_spec

    source, name = parse_spec(spec)
    if source != "zoo" or zoo.model_info(name).task == task.name:
        return
    if task.name == "classification":
        raise ValueError(
            f"zoo:{name} is a causal language model (it reads token ids), not an image "
            "classifier; give it a text data set, e.g. --data text:pydoc"
        )
    raise ValueError(
        f"zoo:{name} is an image classifier, and a text data set trains a causal language "
        "model; give an image data set (e.g. --data digits) or a language model (zoo:gpt-mini)"
    )


def main_logits(output: Any) -> torch.Tensor:
    """The main logits of a network's output: the tensor, or the first of a (logits,
    auxiliary logits) pair as DARTS-style networks return in training."""
    return _split(output)[0]


def _split(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(output, (tuple, list)):
        return output[0], output[1] if len(output) > 1 else None
    return output, None
