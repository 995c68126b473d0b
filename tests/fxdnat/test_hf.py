"""hf: specs — transformers language models built offline from configs made in code, traced
with their attention and MLP branches as edges (fxdnat.hf)."""

from __future__ import annotations

import builtins
import random

import pytest
import torch

import fxdnat
from fxdnat import passes
from fxdnat.specs import build_model, check_untrusted

transformers = pytest.importorskip("transformers")

from fxdnat import hf  # noqa: E402  (after the skip: it imports transformers lazily anyway)

# one architecture per family, with where its blocks are and their attention and MLP parts
FAMILIES = {
    "tiny-llama": ("causal", "hf.model.layers.{}", ("self_attn", "mlp")),
    "tiny-bert": ("masked", "hf.bert.encoder.layer.{}", ("attention", "intermediate")),
    "tiny-t5": ("seq2seq", "hf.encoder.block.{}", ("layer.0", "layer.1")),
}


def _traced(name: str, length: int = 12):
    torch.manual_seed(0)
    built = build_model(f"hf:{name}")
    model = built.model.eval()
    x = torch.randint(0, built.vocab_size, (2, length), generator=torch.Generator().manual_seed(1))
    return built, model, x, fxdnat.trace(model, (x,))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_blocks_trace_into_attention_and_mlp_edges(name):
    objective, block, (attention, mlp) = FAMILIES[name]
    built, model, x, gm = _traced(name)
    assert (built.vocab_size, built.num_classes, built.input_size) == (256, 256, 256)
    assert model.objective == objective
    with torch.no_grad():
        want = model(x)
        assert want.shape == (2, 12, 256)
        torch.testing.assert_close(gm(x), want)
        other = torch.randint(0, 256, (3, 7))  # another batch and length: no mask baked in
        torch.testing.assert_close(gm(other), model(other))
    edges = [e for e in passes.discover(gm) if e.kind == "branch"]
    for layer in range(2):
        for part in (attention, mlp):
            inside = f"{block.format(layer)}.{part}"
            assert any(_calls(gm, e, inside) for e in edges), f"no branch edge runs {inside}"


def _calls(gm, edge, path: str) -> bool:
    """The edge's branch runs code of the module at ``path``."""
    nodes = {n.name: n for n in gm.graph.nodes}
    for name in edge.nodes:
        node = nodes[name]
        stack = [p for p, _ in node.meta.get("nn_module_stack", {}).values()]
        owners = [node.target] if node.op == "call_module" else stack
        if any(o == path or o.startswith(path + ".") for o in owners):
            return True
    return False


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_gated_at_init_and_finalized_compute_the_original(name):
    _, model, x, gm = _traced(name)
    edges = passes.discover(gm)
    gated = passes.gate(gm, edges, tie="full").eval()
    with torch.no_grad():
        torch.testing.assert_close(gated(x), model(x), rtol=1e-6, atol=1e-6)
        decisions = passes.random_decisions(edges, random.Random(name))
        gated.arch.assign(decisions)
        assert passes.decide(gated) == decisions
        final = passes.finalize(gated, decisions).eval()
        torch.testing.assert_close(final(x), gated(x))
    final.graph.lint()
    assert not any(n.target is fxdnat.arch.dnat_mix for n in final.graph.nodes)


def test_overrides_in_the_name_and_as_arguments():
    built = build_model("hf:tiny-gpt2?n_layer=3&vocab_size=100", n_embd=32)
    config = built.model.hf.config
    assert (config.n_layer, config.vocab_size, config.n_embd) == (3, 100, 32)
    assert built.vocab_size == 100 and built.context == 256
    assert build_model("hf:tiny-gpt2", input_size=64).input_size == 64
    with pytest.raises(ValueError, match="at most 256 tokens"):
        build_model("hf:tiny-gpt2", input_size=1000)


def test_a_local_folder_is_a_config(tmp_path):
    hf.build("tiny-llama").model.hf.config.save_pretrained(tmp_path)
    built = build_model(f"hf:{tmp_path}")
    assert built.model.hf.config.hidden_size == 64 and built.model.objective == "causal"


def test_unknown_names_get_one_line_with_the_closest():
    with pytest.raises(ValueError, match=r"unknown transformers model type 'lama'.*tiny-llama"):
        build_model("hf:tiny-lama")
    with pytest.raises(ValueError, match="unknown transformers model type"):
        check_untrusted("hf:tiny-lama", {}, origin="the checkpoint")
    with pytest.raises(ValueError, match="no such folder"):
        build_model("hf:./no/such/folder")
    with pytest.raises(ValueError, match=r"write config overrides as \?key=value"):
        build_model("hf:tiny-llama?layers")
    with pytest.raises(ValueError, match="no causal language-model head for model type 'vit'"):
        build_model("hf:tiny-vit")


def test_pretrained_offline_or_for_a_tiny_config_is_refused(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"cannot load hf:openai-community/gpt2 .*offline"):
        build_model("hf:openai-community/gpt2", pretrained=True)
    with pytest.raises(ValueError, match="has no published weights; drop --pretrained"):
        build_model("hf:tiny-gpt2", pretrained=True)


def test_without_transformers_the_error_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    monkeypatch.setattr(hf.importlib, "import_module", no_transformers)
    with pytest.raises(
        ValueError, match=r"need the transformers library: pip install 'fxdnat\[hf\]'"
    ):
        build_model("hf:tiny-llama")


def test_an_hf_language_model_transforms_end_to_end_on_text(tmp_path):
    """hf:tiny-llama on text:pydoc through the CLI: the language-model task, the quick recipe's
    language-model settings, a finalized checkpoint that eval reads back."""
    import json

    from click.testing import CliRunner

    from fxdnat.cli import main

    out = tmp_path / "run"
    small = ["--epochs", "2", "--arch-epochs", "1", "--limit", "32", "--device", "cpu"]
    args = ["transform", "hf:tiny-llama", "--data", "text:pydoc", "--tie", "full", *small]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "causal-lm" and summary["edges"] == 8
    assert summary["perplexity"] > 1 and summary["test_loss"] < 6  # ln 256 = 5.5 at chance
    stored = torch.load(out / "checkpoint.pt", weights_only=True)
    assert stored["recipe"]["optimizer"] == "adamw"  # not the image recipes' SGD
    assert (stored["model"]["vocab_size"], stored["model"]["context"]) == (256, 128)
    again = CliRunner().invoke(
        main, ["eval", str(out / "checkpoint.pt"), "--json", "--limit", "32"]
    )
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["test_loss"] == pytest.approx(summary["test_loss"], abs=1e-4)


def test_published_weights_must_hold_the_datas_tokens(monkeypatch):
    def build(name, *, pretrained, kwargs):
        return torch.nn.Identity(), 100, 512  # a published model of 100 tokens

    monkeypatch.setattr(hf, "build", build)
    with pytest.raises(ValueError, match="published vocabulary has 100 tokens but the data's"):
        build_model("hf:some/model", pretrained=True, vocab_size=256, context=128)
    assert build_model("hf:some/model", vocab_size=256, context=128).input_size == 128


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-t5"])
def test_a_masked_or_seq2seq_model_is_refused_as_a_next_token_model(name):
    from fxdnat import checkpoint as ckpt

    model = {"spec": f"hf:{name}", "task": "causal-lm", "vocab_size": 256, "context": 32}
    with pytest.raises(ValueError, match="language model: its logits at t score token t"):
        ckpt.build_traced({**model, "kwargs": {}})
