"""Training recipes as data: the paper's protocol and a CPU-sized one, with per-family overrides."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from fxdnat.ir import NAT_WEIGHTS, SCALES, NatWeights, Scale
from fxdnat.reach import THETA_BETAS, THETA_LR, THETA_WEIGHT_DECAY

from ._registry import did_you_mean, model_info

OPTIMIZERS = ("sgd", "adamw")
"""ω's optimizers: SGD with momentum (the paper's, DARTS's) or AdamW (transformers)."""


@dataclass(frozen=True)
class NatSchedule:
    """The NAT baseline's search (``--method nat``): supernet weights and policy, then derive.

    Defaults are NAT's reference code (Guo et al. 2019, guoyongcs/NAT; the project's
    REFERENCES.md): the training set split 40 / 60 between the supernet's weights and the
    policy, each search epoch one pass of weight steps then one of policy steps, SGD with a
    constant lr for the weights, Adam for the policy, 10 samples at derive. The derived network
    then trains from scratch with the recipe's own epochs, as ``original`` does.
    """

    search_epochs: int = 100
    batch_size: int = 64
    lr: float = 0.01  # supernet weights: SGD, constant
    momentum: float = 0.9
    weight_decay: float = 3e-4
    weight_split: float = 0.4  # share of the training set for the weights; the rest: policy
    weight_archs: NatWeights = "uniform"  # what the weights train on (fxdnat.ir.NAT_WEIGHTS)
    policy_lr: float = 3e-4  # Adam
    policy_betas: tuple[float, float] = (0.5, 0.999)
    policy_weight_decay: float = 5e-4
    policy_grad_clip: float = 5.0  # the policy's gradient norm (NAT's `grad_clip`, DARTS's 5)
    entropy_weight: float = 0.003
    baseline_decay: float = 0.99
    derive_samples: int = 10

    def check(self, recipe: str) -> None:
        """Raises ValueError naming the field that cannot run."""
        if self.search_epochs < 1 or self.batch_size < 1 or self.derive_samples < 1:
            raise ValueError(
                f"recipe {recipe!r}: NAT's search_epochs (--search-epochs), batch_size and "
                "derive_samples must be >= 1"
            )
        if not 0 < self.weight_split < 1:
            raise ValueError(f"recipe {recipe!r}: NAT's weight_split must be in (0, 1)")
        if self.weight_archs not in NAT_WEIGHTS:
            raise ValueError(
                f"recipe {recipe!r}: NAT's weight_archs (--nat-weights) is one of {NAT_WEIGHTS}"
            )
        if not (0 < self.lr < math.inf and 0 < self.policy_lr < math.inf):
            raise ValueError(f"recipe {recipe!r}: NAT's learning rates must be finite and > 0")


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of one run, both stages; the training engine reads these fields."""

    name: str
    epochs: int  # total epochs, both stages together
    arch_epochs: int  # length of the architecture stage (ω and θ) inside `epochs`
    batch_size: int
    lr: float  # ω: cosine schedule over all `epochs`
    momentum: float  # SGD's
    weight_decay: float
    grad_clip: float | None  # max global grad norm for ω (None: no clipping)
    optimizer: str = "sgd"  # ω's: "sgd" (with momentum) or "adamw" (betas, decoupled decay)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW's (nanoGPT's); SGD reads momentum
    theta_lr: float = THETA_LR  # θ: Adam, DARTS's architecture optimiser (fxdnat/reach.py)
    theta_betas: tuple[float, float] = THETA_BETAS
    theta_weight_decay: float = THETA_WEIGHT_DECAY
    cutout: int = 0  # side of the cutout hole in pixels (0: off)
    auxiliary_weight: float = 0.0
    drop_path_prob: float = 0.0  # final drop-path probability, ramped linearly 0 → p over epochs
    label_smoothing: float = 0.0
    # θ's schedule is stated in θ steps, not epochs: over T θ steps Adam moves an entry of θ at
    # most about lr·T (its reach), and gradient noise moves it about lr·√T (see fxdnat/reach.py)
    warmup_epochs: int = 0  # ω-only epochs at the start of the architecture stage (θ frozen)
    theta_reach: float | None = None  # lr·T: θ's lr becomes theta_reach / T; None: theta_lr
    finalize_scale: Scale = "keep"  # fold θ's learned coefficients into the network ("one": 1)
    bn_recalibration: int = 0  # training batches that re-estimate BN statistics after finalize
    # the architecture stage's last epochs: the decisions are taken at their start, θ stops
    # training and moves linearly to what finalize reads (dropped entries 0) while ω trains, so
    # finalize changes nothing (fxdnat/engine/stage.py); a budgeted run's default: see config
    fade_epochs: int = 0
    nat: NatSchedule = NatSchedule()  # the NAT baseline's search (``--method nat`` only)

    def __post_init__(self) -> None:
        if not 0 <= self.arch_epochs <= self.epochs or self.epochs < 1:
            raise ValueError(
                f"recipe {self.name!r} needs 0 <= arch_epochs <= epochs and epochs >= 1, got "
                f"arch_epochs={self.arch_epochs}, epochs={self.epochs}"
            )
        if self.batch_size < 1:
            raise ValueError(f"recipe {self.name!r} needs batch_size >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"recipe {self.name!r}: optimizer {self.optimizer!r} is not one of "
                f"{', '.join(OPTIMIZERS)}"
            )
        if not (0 < self.lr < math.inf and 0 < self.theta_lr < math.inf):  # False for nan too
            raise ValueError(
                f"recipe {self.name!r} got lr={self.lr}, theta_lr={self.theta_lr}; learning "
                "rates (--lr, --theta-lr) must be finite positive numbers"
            )
        if not 0 <= self.warmup_epochs <= max(self.arch_epochs - 1, 0):
            raise ValueError(
                f"recipe {self.name!r} warms ω up for {self.warmup_epochs} of its "
                f"{self.arch_epochs} architecture epochs; θ needs at least one of them "
                "(--warmup-epochs must be below --arch-epochs)"
            )
        if self.theta_reach is not None and not 0 < self.theta_reach <= 1e6:
            raise ValueError(
                f"recipe {self.name!r}: theta_reach (--theta-reach) must be a number in "
                "(0, 1e6]; an edge changes after about 1, the paper's protocol has 46.8"
            )
        if not 0 <= self.theta_weight_decay < math.inf:  # False for nan too
            raise ValueError(
                f"recipe {self.name!r}: theta_weight_decay (--theta-weight-decay) must be a "
                "finite number >= 0"
            )
        if self.finalize_scale not in SCALES or self.bn_recalibration < 0:
            raise ValueError(
                f"recipe {self.name!r}: finalize_scale is 'keep' or 'one' and "
                "bn_recalibration a number of batches >= 0"
            )
        if not 0 <= self.fade_epochs <= max(self.arch_epochs - self.warmup_epochs - 1, 0):
            raise ValueError(
                f"recipe {self.name!r} fades for {self.fade_epochs} of its {self.arch_epochs} "
                f"architecture epochs after {self.warmup_epochs} of warm-up; θ needs at least "
                "one epoch before the fade (--fade-epochs must leave one)"
            )
        if not 0 <= self.drop_path_prob < 1:
            raise ValueError(f"recipe {self.name!r}: drop_path_prob must be in [0, 1)")
        self.nat.check(self.name)


_RECIPES: dict[str, Recipe] = {
    # Kim & Lee 2020 §4: SGD lr 0.025 for 600 epochs, the DARTS protocol (batch 96, momentum 0.9,
    # wd 3e-4, cosine, grad clip 5). The paper does not state how the 600 epochs split between the
    # two stages: half (300) for the architecture stage is our choice.
    "paper": Recipe(
        name="paper",
        epochs=600,
        arch_epochs=300,
        batch_size=96,
        lr=0.025,
        momentum=0.9,
        weight_decay=3e-4,
        grad_clip=5.0,
        # the paper's θ reach on CIFAR-10: lr 3e-4 over 300 epochs of ⌊50,000 / 96⌋ = 520
        # steps is lr·T = 46.8; on other data θ's lr is scaled so that the reach stays
        theta_reach=46.8,
    ),
    # minutes on a 2-core CPU on the offline digits-hard set (250 training images at 8×8):
    # batch 16 gives 15 steps an epoch, 70 epochs of θ after 10 of ω warm-up give T = 1,050 θ
    # steps, and reach 30 (θ lr 0.029) lets an edge travel far enough to change
    # (docs/reproducibility.md measures what it changes and how alike the seeds decide)
    "quick": Recipe(
        name="quick",
        epochs=120,
        arch_epochs=80,
        batch_size=16,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        grad_clip=5.0,
        theta_lr=0.01,
        warmup_epochs=10,
        theta_reach=30.0,
        # NAT on digits-hard: as many search epochs as DNAT's architecture stage, at this
        # recipe's batch (NAT's 64 would leave the 100 weight images one step an epoch); NAT's
        # own learning rates otherwise. Not scaled to a reach as θ's is: Adam moves each of the
        # policy's ~1.2 M weights by about lr a step, so a logit moves far more than lr (at
        # 0.02 the policy was sure of one architecture after 9 steps); the supernet's weights
        # at this recipe's 0.05 stayed at chance on uniformly drawn architectures (0.01: 26 %
        # for the source after 20 epochs, ResNet20)
        nat=NatSchedule(search_epochs=80, batch_size=16),
    ),
}

# The DARTS retraining protocol's extras for the NAS models (the paper: cutout for DARTS and
# ProxylessNAS; NAT/DARTS protocol: auxiliary weight 0.4, drop-path 0.2).
_NAS_EXTRAS: dict[str, Any] = {"cutout": 16, "auxiliary_weight": 0.4, "drop_path_prob": 0.2}
# the paper trains MobileNetV2 and DARTS 300 epochs on Tiny ImageNet; half again for θ (our choice)
_TINY_IMAGENET_EPOCHS: dict[str, Any] = {"epochs": 300, "arch_epochs": 150}

_QUICK_DIGITS: dict[str, Any] = {
    "epochs": 15,
    "arch_epochs": 6,
    "warmup_epochs": 0,
    "batch_size": 64,
    "theta_lr": 0.01,
    "theta_reach": None,
    # 1,437 images at 32 px: NAT searches as long as DNAT's stage, at NAT's batch
    "nat": NatSchedule(search_epochs=6),
}

# Language models on a CPU (the GPTs, and hf: specs on text data), on text:pydoc (3,277
# windows of 128 bytes: 205 steps an epoch at batch 16).
# AdamW, not the paper's SGD: a transformer's embeddings, LayerNorms and attention logits want
# per-parameter step sizes (nanoGPT, and every GPT recipe since); lr 3e-3 for a model under 1 M
# parameters, cosine to 0 with the engine's schedule, gradients clipped at 1 (nanoGPT's),
# decoupled weight decay 0.01 on every weight. One epoch of ω alone (θ decides nothing about a
# network that predicts nothing yet), one of ω and θ (T = 205 θ steps), one of the network:
# gpt-mini in minutes on a 2-core CPU (docs/language-models.md). Reach 10 moves an edge that
# θ's gradient keeps pushing far enough to change, with noise lr·√T = 0.7 under the 1 a change
# needs (fxdnat/reach.py).
_QUICK_GPT: dict[str, Any] = {
    "epochs": 3,
    "arch_epochs": 2,
    "warmup_epochs": 1,
    "batch_size": 16,
    "optimizer": "adamw",
    "lr": 3e-3,
    "weight_decay": 0.01,
    "grad_clip": 1.0,
    "theta_reach": 10.0,
    "nat": NatSchedule(search_epochs=2, batch_size=16),
}

# (recipe, family or None for any, dataset or None for any) → field overrides, applied in order
OVERRIDES: tuple[tuple[str, str | None, str | None, dict[str, Any]], ...] = (
    ("paper", "darts", None, _NAS_EXTRAS),
    ("paper", "proxylessnas", None, _NAS_EXTRAS),
    ("paper", "mobilenetv2", "tinyimagenet", _TINY_IMAGENET_EPOCHS),
    ("paper", "darts", "tinyimagenet", _TINY_IMAGENET_EPOCHS),
    # digits at 32 px is 16× the work per image and has 1,437 images: the earlier quick recipe
    # (about three minutes; lr·T 1.3, so θ changes no edge, and the run says so)
    ("quick", None, "digits", _QUICK_DIGITS),
    # any causal language model on text (zoo:gpt-*, hf: specs): the GPT recipe
    ("quick", None, "text", _QUICK_GPT),
)


def list_recipes() -> list[str]:
    """Names of the recipes, sorted."""
    return sorted(_RECIPES)


def get_recipe(name: str, model: str | None = None, dataset: str | None = None) -> Recipe:
    """The recipe `name`, with the overrides for `model`'s family and for `dataset` applied.

    `model` is a zoo name (optionally "zoo:"-prefixed); a spec from another source ("timm:…",
    "module:…") gets no family overrides. `dataset` is matched by its kind ("text" for
    "text:pydoc", "imagefolder" for "imagefolder:PATH"), without case, "-" or "_".
    """
    if name not in _RECIPES:
        raise ValueError(
            f"unknown recipe {name!r}{did_you_mean(name, _RECIPES)} "
            f"known: {', '.join(list_recipes())}"
        )
    family = _family(model)
    data = _normalise_dataset(dataset)
    recipe = _RECIPES[name]
    for recipe_name, over_family, over_dataset, fields in OVERRIDES:
        if recipe_name == name and over_family in (None, family) and over_dataset in (None, data):
            recipe = dataclasses.replace(recipe, **fields)
    return recipe


def _family(model: str | None) -> str | None:
    if model is None:
        return None
    if model.startswith("zoo:"):
        model = model[len("zoo:") :]
    elif ":" in model:
        return None
    return model_info(model).family


def _normalise_dataset(dataset: str | None) -> str | None:
    if dataset is None:
        return None
    return dataset.partition(":")[0].lower().replace("-", "").replace("_", "")
