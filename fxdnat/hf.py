"""``hf:`` specs: language models from the optional ``transformers`` library, ready to trace.

A name picks a config; fxdnat builds the model from it with random weights (published weights
only with ``pretrained=True``) and wraps it so that every model has one traceable signature,
``forward(input_ids: LongTensor (B, T)) -> logits FloatTensor (B, T, vocab)``:

- ``hf:tiny-TYPE`` — transformers' config for the model type TYPE (``llama``, ``gpt2``,
  ``bert``, ``t5``, ...; the ``model_type`` of a config.json) at a small size fxdnat sets
  (:data:`TINY`): built in code, offline, in seconds.
- ``hf:TYPE`` — transformers' default config for that type: the architecture's base size
  (GPT-2 124 M, BERT-base, Llama 7 B), offline, random weights.
- ``hf:PATH`` — a local folder with a ``config.json`` (and weights, for ``pretrained=True``).
- ``hf:OWNER/NAME`` (or a legacy id like ``gpt2`` with ``pretrained=True``) — a Hugging Face
  Hub repository: its config.json from the local cache or the network.

``?key=value&...`` after any name overrides config attributes
(``hf:tiny-llama?num_hidden_layers=4``); values are read as Python literals (``4``, ``0.1``,
``True``), else kept as strings.

What the wrapper computes depends on the model's family, its ``objective``:

- ``causal`` (GPT-2, Llama, ...): the causal LM's logits; ``logits[:, t]`` scores token t + 1.
- ``masked`` (BERT, RoBERTa, ...): the masked LM head's logits over the whole, unmasked
  sequence, attention bidirectional; ``logits[:, t]`` scores token t.
- ``seq2seq`` (T5, BART, ...): the encoder reads ``input_ids``; the decoder reads them shifted
  right by one (the config's ``decoder_start_token_id`` first), as these models train with
  ``labels = input_ids``; ``logits[:, t]`` scores token t (a reconstruction objective).

No KV cache (``use_cache=False``), no attention mask (every sequence full length, no padding);
attention is transformers' ``sdpa`` where the model offers it, else ``eager``. Tracing needs
no transformers code path of its own: transformers builds its attention masks in functions
(``create_causal_mask``, ...) that the wrapper lists in ``fxdnat_autowrap``, so
:func:`fxdnat.trace` keeps each as one call that runs eagerly on every forward — the mask
follows the batch's shape, nothing is baked in — and the attention modules, whose code
unpacks shapes, become opaque leaves while each block's residual adds stay in the graph.

``trust_remote_code`` is always False: a Hub repository whose architecture is not part of
transformers ships its own Python file, and loading it would run that author's code in the
user's process — a spec (which a checkpoint also stores) must never do that.
"""

from __future__ import annotations

import ast
import difflib
import importlib
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

OBJECTIVES = ("causal", "masked", "seq2seq")
INSTALL = "pip install 'fxdnat[hf]'"

# The small size of hf:tiny-TYPE, set wherever the type's config has the attribute (through
# its attribute_map too: GPT-2's n_embd is hidden_size). Head size 16, four heads, two layers:
# a model that traces and trains on a CPU in seconds; a byte-sized vocabulary.
TINY: dict[str, Any] = {
    "vocab_size": 256,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 256,
    "max_position_embeddings": 256,
    # encoder-decoder and older configs name the same sizes their own way
    "num_decoder_layers": 2,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 256,
    "decoder_ffn_dim": 256,
    "d_ff": 256,
    "ffn_dim": 256,
    "n_inner": 256,
    "hidden_dim": 256,  # DistilBERT's feed-forward size
    "embedding_size": 64,  # ALBERT's factorised embedding
    "rotary_dim": 8,  # GPT-J's and CodeGen's rotary part of a head
    "num_kv_heads": 2,  # Falcon
}
# Model types whose tiny form needs more than TINY (an attribute that must divide another).
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},  # one pattern per layer
}


class HFBuilt(NamedTuple):
    """What :func:`build` returns: the wrapped model, its vocabulary and its context length."""

    model: LanguageModel
    vocab_size: int
    context: int


class LanguageModel(nn.Module):
    """A transformers model behind ``forward(input_ids (B, T) int64) -> logits (B, T, V)``.

    Attributes:
        hf: the transformers model (its module paths, e.g. ``hf.model.layers.0``, name the
            edges).
        objective: one of :data:`OBJECTIVES`; see the module docstring.
        fxdnat_autowrap: transformers' mask builders, kept as single calls by fxdnat.trace.
    """

    def __init__(self, hf: nn.Module, objective: str, decoder_start: int | None = None) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
        self.hf = hf
        self.objective = objective
        self.decoder_start = decoder_start
        self.fxdnat_autowrap = _mask_builders()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.objective == "causal":
            return self.hf(input_ids=input_ids, use_cache=False).logits
        if self.objective == "masked":
            return self.hf(input_ids=input_ids).logits
        # (B, T) -> (B, T): the start token, then every token but the last
        start = torch.full_like(input_ids[:, :1], self.decoder_start)
        decoder_ids = torch.cat([start, input_ids[:, :-1]], dim=1)
        out = self.hf(input_ids=input_ids, decoder_input_ids=decoder_ids, use_cache=False)
        return out.logits


def build(name: str, *, pretrained: bool = False, kwargs: dict | None = None) -> HFBuilt:
    """The model ``hf:name`` names, wrapped; see the module docstring for names and outputs.

    Args:
        name: the spec without ``hf:``, optionally with ``?key=value&...`` config overrides.
        pretrained: load the published weights of a Hub repository or a local folder (needs
            the network once, unless transformers' cache holds them).
        kwargs: more config overrides (they win over the name's).

    Raises:
        ValueError: transformers is missing, the name is unknown or malformed, the config or
            weights cannot be had (offline), or transformers has no language-model head for
            the architecture — one line saying what to do.
    """
    transformers = _transformers()
    base, overrides = parse_name(name)
    overrides = {**overrides, **(kwargs or {})}
    config = _config(transformers, base, overrides, pretrained)
    objective = objective_of(config)
    model = _model(transformers, base, config, objective, pretrained)
    start = getattr(config, "decoder_start_token_id", None)
    if objective == "seq2seq" and start is None:
        start = getattr(config, "pad_token_id", None)
    if objective == "seq2seq" and start is None:
        raise ValueError(f"hf:{name}'s config names no decoder_start_token_id; pass one: ?…=0")
    return HFBuilt(LanguageModel(model, objective, start), config.vocab_size, _context(config))


def parse_name(name: str) -> tuple[str, dict[str, Any]]:
    """Split ``"tiny-llama?num_hidden_layers=4"`` into ("tiny-llama", {"num_hidden_layers": 4})."""
    base, _, query = name.partition("?")
    if not base:
        raise ValueError(f"hf spec {name!r} names no model; e.g. hf:tiny-llama or hf:gpt2")
    overrides: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(
                f"cannot read {item!r} in hf:{name}; write config overrides as "
                "?key=value&key=value, e.g. hf:tiny-llama?num_hidden_layers=4"
            )
        overrides[key] = _literal(text)
    return base, overrides


def check_name(name: str) -> None:
    """Refuse a malformed ``hf:`` name before anything is built (for specs read from files)."""
    base, _ = parse_name(name)
    if base.startswith("tiny-"):
        _model_type(_transformers(), base.removeprefix("tiny-"))


def objective_of(config: Any) -> str:
    """``seq2seq``, ``masked`` or ``causal``: which head fxdnat builds for this config."""
    from transformers.models.auto import modeling_auto  # lazy: transformers is optional

    kind = config.model_type
    if getattr(config, "is_encoder_decoder", False):
        heads = modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
        objective = "seq2seq"
    elif kind in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        heads, objective = modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES, "masked"
    else:
        heads, objective = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "causal"
    if kind not in heads:
        raise ValueError(
            f"transformers has no {objective} language-model head for model type {kind!r}; "
            "fxdnat's hf: specs build text language models (see docs/language-models.md)"
        )
    return objective


def _config(transformers, base: str, overrides: dict, pretrained: bool):
    """The config ``base`` names (see the module docstring), with ``overrides`` applied."""
    auto = transformers.AutoConfig
    if base.startswith("tiny-"):
        if pretrained:
            raise ValueError(
                f"hf:{base} is built in code with random weights and has no published weights; "
                "drop --pretrained, or name a Hub repository (hf:OWNER/NAME)"
            )
        return _tiny_config(transformers, _model_type(transformers, base[5:]), overrides)
    if Path(base).expanduser().is_dir():
        return _load(auto.from_pretrained, base, str(Path(base).expanduser()), overrides)
    if base.startswith((".", "/", "~")):
        raise ValueError(f"hf:{base}: no such folder; name a folder that holds a config.json")
    if not pretrained and base in _model_types(transformers):
        return auto.for_model(base, **overrides)
    return _hub(auto.from_pretrained, base, overrides)


def _tiny_config(transformers, kind: str, overrides: dict):
    """transformers' config for ``kind`` at fxdnat's small size; token ids that the config
    names outside the small vocabulary become its last id (embeddings check them)."""
    defaults = transformers.AutoConfig.for_model(kind)
    settable = (k for k in TINY if not isinstance(getattr(type(defaults), k, None), property))
    own = getattr(defaults, "attribute_map", {})  # GPT-2's n_embd for hidden_size, ...
    sizes = {own.get(key, key): TINY[key] for key in settable if hasattr(defaults, key)}
    sizes.update(TINY_OVERRIDES.get(kind, {}))
    overrides = {own.get(key, key): value for key, value in overrides.items()}
    vocab = {**sizes, **overrides}.get("vocab_size", getattr(defaults, "vocab_size", None))
    last = vocab - 1 if isinstance(vocab, int) else None
    for key, value in defaults.to_dict().items() if last is not None else ():
        if key.endswith("_token_id") and isinstance(value, int) and value > last:
            sizes[key] = last
        elif key.endswith("_token_id") and isinstance(value, list):
            sizes[key] = [min(v, last) for v in value]
    return transformers.AutoConfig.for_model(kind, **{**sizes, **overrides})


def _hub(load, base: str, overrides: dict, **more: Any):
    """``load(base, ...)`` from transformers' cache, else from the Hugging Face Hub."""
    try:
        return load(base, local_files_only=True, trust_remote_code=False, **overrides, **more)
    except OSError:  # not in the cache: ask the Hub
        pass
    return _load(load, base, base, overrides, **more)


def _load(load, base: str, where: str, overrides: dict, **more: Any):
    try:
        return load(where, trust_remote_code=False, **overrides, **more)
    except OSError as exc:
        raise ValueError(
            f"cannot load hf:{base} ({_first_line(exc)}); offline, build a small model in code "
            "instead (hf:tiny-llama, hf:tiny-gpt2, hf:tiny-bert, ...) or name a local folder"
        ) from exc
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ValueError(
                f"hf:{base} needs Python code from its repository (trust_remote_code), which "
                "fxdnat never runs; use an architecture that ships with transformers"
            ) from exc
        raise ValueError(f"cannot load hf:{base}: {_first_line(exc)}") from exc


def _model(transformers, base: str, config, objective: str, pretrained: bool) -> nn.Module:
    """The transformers model with the objective's head: sdpa attention where it is offered."""
    auto = {
        "causal": transformers.AutoModelForCausalLM,
        "masked": transformers.AutoModelForMaskedLM,
        "seq2seq": transformers.AutoModelForSeq2SeqLM,
    }[objective]

    def make(attention: str) -> nn.Module:
        if pretrained:
            return _hub(
                auto.from_pretrained, base, {}, config=config, attn_implementation=attention
            )
        return auto.from_config(config, attn_implementation=attention)

    try:
        return make("sdpa")
    except ValueError as exc:  # this architecture has no sdpa attention
        if not any(word in str(exc) for word in ("sdpa", "scaled_dot_product_attention")):
            raise
        return make("eager")


def _context(config) -> int:
    """The longest sequence the config's positions allow; 512 for relative positions (T5)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 512


def _model_types(transformers) -> list[str]:
    from transformers.models.auto import configuration_auto  # lazy: transformers is optional

    return sorted(configuration_auto.CONFIG_MAPPING_NAMES)


def _model_type(transformers, kind: str) -> str:
    """``kind`` if transformers knows it, else a ValueError with the closest types."""
    types = _model_types(transformers)
    if kind not in types:
        hint = difflib.get_close_matches(kind, types, n=3)
        close = f"; did you mean {', '.join(f'tiny-{h}' for h in hint)}?" if hint else ""
        raise ValueError(
            f"unknown transformers model type {kind!r} in hf:tiny-{kind}{close} (a type is the "
            "model_type of a config.json: llama, gpt2, bert, t5, ...)"
        )
    return kind


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _transformers():
    try:
        return importlib.import_module("transformers")
    except ImportError as exc:
        raise ValueError(f"hf: specs need the transformers library: {INSTALL}") from exc


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def _mask_builders() -> tuple:
    """transformers' public mask builders (``create_causal_mask``, ...): they branch on the
    input's values and shapes, so a trace keeps each as one call, run on every forward."""
    from transformers import masking_utils  # lazy: transformers is optional

    return tuple(
        getattr(masking_utils, name)
        for name in sorted(vars(masking_utils))
        if name.startswith("create_") and callable(getattr(masking_utils, name))
    )
