"""The logit lens is exact for every architecture in its table.

For each case a tiny random model is built from its config class (norm weights,
biases and logit scales randomised, so a missed norm or transform cannot pass
by accident), saved with ``save_pretrained`` and loaded again with
``AutoModelForCausalLM.from_pretrained`` (the code path of hub models). Then:

(a) the lens at layer L equals ``model(input_ids).logits`` bit for bit;
(b) every inner layer equals a hand computation from
    ``model(..., output_hidden_states=True).hidden_states`` written out below
    (:data:`HAND`), which names the modules and indices itself;
(c) ``num_layers`` / ``layer_numbers`` / ``hidden_state`` index as documented
    (Mamba family: no embedding entry);
(d) unsupported model types are refused from the config, with the supported list;
(e) ``decode`` works on any leading shape and ``forward_hidden_states`` returns
    the model's own hidden states.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from tiny_configs import CASES, VOCAB  # tests/tiny_configs.py (tests/ is on sys.path)
from transformers import AutoModelForCausalLM

from exitbench.architectures import ARCHITECTURES, UnsupportedArchitecture, decoder_blocks
from exitbench.lens import LogitLens

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BATCH, SEQ = 2, 7


# Independent hand computations: (model, hidden_states, layer) -> logits at an inner layer,
# naming the module path, the head, the post-head formula and the hidden-state index itself.
def _softcapped(logits: torch.Tensor, cap: float) -> torch.Tensor:
    return cap * torch.tanh(logits / cap)


HAND: dict[str, Callable[..., torch.Tensor]] = {
    "gpt2": lambda m, hs, layer: m.lm_head(m.transformer.ln_f(hs[layer])),
    "gpt_neox": lambda m, hs, layer: m.lm_head(m.gpt_neox.final_layer_norm(hs[layer])),
    "gptj": lambda m, hs, layer: m.lm_head(m.transformer.ln_f(hs[layer])),  # lm_head has a bias
    "falcon": lambda m, hs, layer: m.lm_head(m.transformer.ln_f(hs[layer])),
    "opt": lambda m, hs, layer: m.lm_head(m.model.decoder.final_layer_norm(hs[layer])),
    "opt-350m": lambda m, hs, layer: m.lm_head(m.model.decoder.project_out(hs[layer])),
    "phi": lambda m, hs, layer: m.lm_head(m.model.final_layernorm(hs[layer])),  # lm_head has a bias
    "gemma2": lambda m, hs, layer: _softcapped(
        m.lm_head(m.model.norm(hs[layer])), m.config.final_logit_softcapping
    ),
    "gemma3_text": lambda m, hs, layer: _softcapped(
        m.lm_head(m.model.norm(hs[layer])), m.config.final_logit_softcapping
    ),
    "gemma3": lambda m, hs, layer: m.lm_head(m.model.language_model.norm(hs[layer])),
    "cohere": lambda m, hs, layer: m.lm_head(m.model.norm(hs[layer])) * m.config.logit_scale,
    "granite": lambda m, hs, layer: m.lm_head(m.model.norm(hs[layer])) / m.config.logits_scaling,
    "granitemoe": lambda m, hs, layer: m.lm_head(m.model.norm(hs[layer])) / m.config.logits_scaling,
    "granitemoehybrid": lambda m, hs, layer: (
        m.lm_head(m.model.norm(hs[layer])) / m.config.logits_scaling
    ),
    # Mamba family: hidden_states has no embedding entry, h_l = hs[layer - 1].
    "mamba": lambda m, hs, layer: m.lm_head(m.backbone.norm_f(hs[layer - 1])),
    "mamba2": lambda m, hs, layer: m.lm_head(m.backbone.norm_f(hs[layer - 1])),
    "falcon_mamba": lambda m, hs, layer: m.lm_head(m.backbone.norm_f(hs[layer - 1])),
    "jamba": lambda m, hs, layer: m.lm_head(m.model.final_layernorm(hs[layer])),
    "zamba2": lambda m, hs, layer: m.lm_head(m.model.final_layernorm(hs[layer])),
}
for _case in CASES:  # the plain Llama layout: model.norm, lm_head, hs[layer]
    HAND.setdefault(_case, lambda m, hs, layer: m.lm_head(m.model.norm(hs[layer])))

NO_EMBEDDING_ENTRY = {"mamba", "mamba2", "falcon_mamba"}


def _randomise(model: torch.nn.Module) -> None:
    """Random norm weights/biases and head bias, so that a skipped norm changes the logits."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if "norm" not in type(module).__name__.lower():
                continue
            for name, parameter in module.named_parameters(recurse=False):
                low, high = (0.5, 1.5) if name == "weight" else (-0.3, 0.3)
                parameter.copy_(
                    torch.empty_like(parameter).uniform_(low, high, generator=generator)
                )
        head_bias = getattr(model.get_output_embeddings(), "bias", None)
        if head_bias is not None:
            head_bias.copy_(torch.empty_like(head_bias).uniform_(-1.0, 1.0, generator=generator))


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory) -> SimpleNamespace:
    """A tiny random model of one case, saved and loaded again, with its outputs on fixed input."""
    name = request.param
    config = CASES[name]()
    torch.manual_seed(0)
    built = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _randomise(built)
    path = tmp_path_factory.mktemp(name)
    built.save_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    input_ids = torch.randint(
        3, VOCAB - 3, (BATCH, SEQ), generator=torch.Generator().manual_seed(2)
    )
    with torch.inference_mode():
        logits = model(input_ids).logits
        hidden_states = model(input_ids, output_hidden_states=True).hidden_states
    return SimpleNamespace(
        name=name,
        config=config,
        model=model,
        lens=LogitLens.from_model(model),
        input_ids=input_ids,
        logits=logits,
        hidden_states=hidden_states,
    )


def test_last_layer_is_the_models_logits(case) -> None:
    """(a) decode_L(hidden_states[-1]) == model(input_ids).logits, bit for bit."""
    lens, layer = case.lens, case.lens.num_layers
    with torch.inference_mode():
        from_outputs = lens.decode(lens.hidden_state(case.hidden_states, layer), layer)
        from_lens = lens.decode(
            lens.hidden_state(lens.forward_hidden_states(case.input_ids, None), layer), layer
        )
    assert from_outputs.dtype == case.model.get_output_embeddings().weight.dtype
    torch.testing.assert_close(from_outputs, case.logits, rtol=0, atol=0)
    torch.testing.assert_close(from_lens, case.logits, rtol=0, atol=0)


def test_inner_layers_match_hand_computation(case) -> None:
    """(b) every layer < L equals the hand-written norm / head / transform / index."""
    lens, hs = case.lens, case.hidden_states
    with torch.inference_mode():
        for layer in lens.layer_numbers[:-1]:
            expected = HAND[case.name](case.model, hs, layer)
            got = lens.decode(lens.hidden_state(hs, layer), layer)
            torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=f"layer {layer}")
            head = case.model.get_output_embeddings()
            if hs[layer].shape[-1] == head.in_features:  # a lens skipping the norm would differ
                assert not torch.allclose(got, head(hs[layer]))


def test_layer_numbers_and_indexing(case) -> None:
    """(c) L from the config; Mamba family has no layer 0 and h_l = hidden_states[l - 1]."""
    lens, hs = case.lens, case.hidden_states
    num_layers = case.config.get_text_config().num_hidden_layers
    assert lens.num_layers == num_layers
    assert len(hs) == num_layers + 1
    shifted = case.name in NO_EMBEDDING_ENTRY
    assert lens.layer_numbers == list(range(1 if shifted else 0, num_layers + 1))
    for layer in lens.layer_numbers[:-1]:
        assert lens.hidden_state(hs, layer) is hs[layer - 1 if shifted else layer]
    assert lens.hidden_state(hs, num_layers) is hs[-1]
    if not shifted:  # layer 0 is the embedding output, the input of the first block
        assert lens.hidden_state(hs, 0) is hs[0]
    with pytest.raises(ValueError, match="out of range"):
        lens.decode(hs[-1], num_layers + 1)
    with pytest.raises(ValueError, match="hidden states"):
        lens.hidden_state(hs[:-1], 1)


def test_lens_of_a_weightless_model(case) -> None:
    """The lens of a meta-device skeleton (as models.describe_model builds) has the same layers."""
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(case.model.config)
    lens = LogitLens.from_model(skeleton)
    assert (lens.num_layers, lens.layer_numbers) == (case.lens.num_layers, case.lens.layer_numbers)


def test_decode_any_leading_shape_and_forward_hidden_states(case) -> None:
    """(e) chunks of flattened tokens and single vectors decode like the full batch."""
    lens = case.lens
    attention_mask = torch.ones_like(case.input_ids)
    attention_mask[1, -3:] = 0  # right padding, as extract batches
    with torch.inference_mode():
        expected = case.model(
            case.input_ids, attention_mask=attention_mask, output_hidden_states=True
        ).hidden_states
        got = lens.forward_hidden_states(case.input_ids, attention_mask)
        assert len(got) == len(expected)
        for mine, theirs in zip(got, expected, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
        for layer in (lens.layer_numbers[0], lens.num_layers):
            hidden = lens.hidden_state(got, layer)
            full = lens.decode(hidden, layer)
            flat = hidden.reshape(-1, hidden.shape[-1])
            chunks = torch.cat([lens.decode(chunk, layer) for chunk in flat.split(5)])
            torch.testing.assert_close(chunks.reshape(full.shape), full, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(
                lens.decode(hidden[1, 2], layer), full[1, 2], rtol=1e-6, atol=1e-6
            )


def test_unsupported_type_is_refused_before_touching_the_model() -> None:
    """(d) a model of an unsupported type is refused from its config, with the supported list."""
    fake = SimpleNamespace(config=SimpleNamespace(model_type="bert"))
    with pytest.raises(UnsupportedArchitecture) as error:
        LogitLens.from_model(fake)
    assert "'bert'" in str(error.value)
    assert ", ".join(sorted(ARCHITECTURES)) in str(error.value)


@pytest.mark.parametrize("name", ["llama", "mamba2"])
def test_half_precision_last_layer(name) -> None:
    """In bfloat16 the lens returns the head's dtype and, upcast, equals the model's logits."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CASES[name](), dtype=torch.bfloat16).eval()
    _randomise(model)
    lens = LogitLens.from_model(model)
    input_ids = torch.randint(
        3, VOCAB - 3, (BATCH, SEQ), generator=torch.Generator().manual_seed(2)
    )
    with torch.inference_mode():
        logits = model(input_ids).logits
        hs = lens.forward_hidden_states(input_ids, torch.ones_like(input_ids))
        got = lens.decode(lens.hidden_state(hs, lens.num_layers), lens.num_layers)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), logits.float(), rtol=0, atol=0)


def test_cosine_states_read_the_final_norms_input_and_the_embedding(case) -> None:
    """``capture_cosine_states`` records the final norm's input h_L: the model's own final
    norm (and pre-head) of it is ``hidden_states[-1]``, bit for bit; for the Mamba family it
    also records the embedding output, block 1's input. The hooks are gone afterwards."""
    lens = case.lens
    blocks = decoder_blocks(case.model)
    block_input = {}

    def keep(module, args, kwargs):
        block_input.setdefault("h", args[0] if args else kwargs["hidden_states"])

    handle = blocks[0].register_forward_pre_hook(keep, with_kwargs=True)
    with torch.inference_mode():
        with lens.capture_cosine_states() as captured:
            states = lens.forward_hidden_states(case.input_ids, None)
        handle.remove()
        if lens.norm is None:  # OPT-350m: no final norm, hidden_states[-1] = project_out(h_L)
            assert "pre_norm" not in captured
        else:
            normed = lens.norm(captured["pre_norm"])
            if lens.pre_head is not None:
                normed = lens.pre_head(normed)
            torch.testing.assert_close(normed, states[-1], rtol=0, atol=0)
    cosine = lens.cosine_states(states, captured)
    if case.name in NO_EMBEDDING_ENTRY:
        torch.testing.assert_close(captured["embedding"], block_input["h"], rtol=0, atol=0)
        torch.testing.assert_close(captured["pre_norm"], states[-2], rtol=0, atol=0)
        assert sorted(cosine) == [0, *lens.layer_numbers] and cosine[0] is captured["embedding"]
    else:
        assert "embedding" not in captured and sorted(cosine) == lens.layer_numbers
    if "pre_norm" in captured:
        assert cosine[lens.num_layers] is captured["pre_norm"]
    hooks = [m._forward_pre_hooks for m in (lens.norm,) if m is not None]
    hooks += [case.model.get_input_embeddings()._forward_hooks]
    assert not any(hooks)
