"""The exact logit lens: decode any layer's hidden state with the model's own final norm and head.

For a model with L blocks and residual stream h_l after block l (h_0 = the
embedding output), the lens logits at layer l are

    decode_l(h_l) = post(head(proj(norm(h_l))))     for l < L
    decode_L(h_L) = post(head(h_L))                 hidden_states[-1] is already proj(norm(h_L))

with ``norm`` the model's own final norm module (Gemma's (1 + w) RMSNorm,
OLMo's weightless LayerNorm, ...), ``proj`` an optional projection before the
head (OPT-350m's ``project_out``), ``head = model.get_output_embeddings()``
(with its bias, e.g. Phi) and ``post`` the model's post-head transform
(Gemma-2 softcap c * tanh(x / c), Granite x / logits_scaling, Cohere
x * logit_scale). Every step calls the very module or formula the model's own
forward uses, so decode_L equals ``model(...).logits`` bit for bit.

Which hidden state is h_l: ``output_hidden_states=True`` returns L + 1 tensors.
Transformer models (and the Jamba / Zamba2 hybrids) give
(h_0, h_1, ..., h_{L-1}, norm(h_L)); the Mamba family gives no embedding entry:
(h_1, ..., h_L, norm(h_L)), so h_l = hidden_states[l - 1] for l < L. In both
cases the lens takes layer L from ``hidden_states[-1]``.

``cos_prev`` compares like with like (:meth:`LogitLens.capture_cosine_states`,
:meth:`LogitLens.cosine_states`): at layer L it reads the pre-norm h_L, the
final norm's input recorded by a forward pre-hook during the same forward pass
(where the model has no final norm, ``hidden_states[-1]`` is h_L itself, or
OPT-350m's projected state of another width: no cosine); for the Mamba family
the input embeddings' output, recorded by a forward hook, is h_0, so layer 1
has a cosine too.

Every per-architecture fact (which module is the final norm, which post-head
transform, how hidden states are indexed) comes from the one table,
:data:`exitbench.architectures.ARCHITECTURES`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch

from exitbench.architectures import (
    Architecture,
    PostHead,
    UnsupportedArchitecture,
    check_supported,
    module_at,
)

log = logging.getLogger(__name__)

__all__ = ["LogitLens", "TunedLens", "apply_post_head"]


def apply_post_head(post_head: PostHead, logits: torch.Tensor, value: float) -> torch.Tensor:
    """The model's post-head transform, with the same operations in the same order as its forward.

    ``softcap``: c * tanh(x / c); ``multiply``: x * c; ``divide``: x / c, with c = ``value``.
    """
    if post_head.kind == "softcap":
        return torch.tanh(logits / value) * value
    if post_head.kind == "multiply":
        return logits * value
    if post_head.kind == "divide":
        return logits / value
    raise ValueError(f"unknown post-head transform kind {post_head.kind!r}")


def _device_of(module: torch.nn.Module | None) -> torch.device | None:
    """The device of the module's first parameter (None for a module without parameters)."""
    if module is None:
        return None
    parameter = next(module.parameters(), None)
    return None if parameter is None else parameter.device


class LogitLens:
    """Decode hidden states of one loaded model; see the module docstring for the formulas."""

    def __init__(self, model: torch.nn.Module, spec: Architecture) -> None:
        self.model = model
        self.spec = spec
        self.model_type: str = model.config.model_type
        self.backbone = module_at(model, spec.backbone)
        if self.backbone is None:
            raise UnsupportedArchitecture(
                f"{type(model).__name__}: backbone {spec.backbone!r} is None; fix the entry for "
                f"{self.model_type!r} in exitbench.architectures.ARCHITECTURES"
            )
        self.norm = module_at(model, spec.final_norm)
        self.pre_head = module_at(model, spec.pre_head) if spec.pre_head else None
        self.head = model.get_output_embeddings()
        if self.head is None:
            raise UnsupportedArchitecture(
                f"{type(model).__name__} (model_type {self.model_type!r}) has no output "
                "embeddings (LM head); load it with AutoModelForCausalLM"
            )
        self.post_value: float | None = None
        if spec.post_head is not None:
            value = getattr(model.config, spec.post_head.config_key, None)
            self.post_value = None if value is None else float(value)
        self.num_layers: int = int(model.config.get_text_config().num_hidden_layers)
        first = 0 if spec.embedding_entry else 1
        self.layer_numbers: list[int] = list(range(first, self.num_layers + 1))
        self._norm_device = _device_of(self.norm)
        self._pre_head_device = _device_of(self.pre_head)
        self._head_device = _device_of(self.head)
        head_weight = getattr(self.head, "weight", None)
        self._head_dtype = (
            head_weight.dtype
            if isinstance(head_weight, torch.Tensor) and head_weight.is_floating_point()
            else None
        )

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> LogitLens:
        """The lens of a loaded *ForCausalLM (or Gemma3ForConditionalGeneration).

        Works on a weightless ``meta``-device model too (no tensor is touched).
        Raises :class:`UnsupportedArchitecture` for a model_type not in the table.
        """
        return cls(model, check_supported(model.config.model_type))

    def __repr__(self) -> str:
        return f"LogitLens({self.model_type!r}, num_layers={self.num_layers}, spec={self.spec})"

    def _check_layer(self, layer: int) -> None:
        if layer not in self.layer_numbers:
            raise ValueError(
                f"layer {layer} out of range for {self.model_type!r}: the lens has layers "
                f"{self.layer_numbers[0]}..{self.num_layers}"
            )

    def hidden_state(self, hidden_states: Sequence[torch.Tensor], layer: int) -> torch.Tensor:
        """h_layer from ``outputs.hidden_states`` (0 = embeddings; L = hidden_states[-1]).

        With an embedding entry h_l = hidden_states[l]; without (Mamba family)
        h_l = hidden_states[l - 1] for l < L. Layer L is always hidden_states[-1],
        which the model has already final-normed.
        """
        self._check_layer(layer)
        if len(hidden_states) != self.num_layers + 1:
            raise ValueError(
                f"expected {self.num_layers + 1} hidden states for {self.model_type!r} with "
                f"{self.num_layers} layers, got {len(hidden_states)}; pass the hidden_states of "
                "forward_hidden_states (or of model(..., output_hidden_states=True))"
            )
        if layer == self.num_layers:
            return hidden_states[-1]
        return hidden_states[layer if self.spec.embedding_entry else layer - 1]

    def decode(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Logits [..., V] = post(head(proj(norm(h)))) in the head's dtype, for any leading shape.

        The head's input is cast to the head's dtype first, as Mamba's forward does
        (its residual stream is float32 under bfloat16 weights); for every other model
        that cast is a no-op.

        At layer L norm and proj are skipped: ``hidden_states[-1]`` is already the
        head's input (the model's forward has applied them).
        """
        self._check_layer(layer)
        if layer != self.num_layers:
            if self.norm is not None:
                hidden = self.norm(_to(hidden, self._norm_device))
            if self.pre_head is not None:
                hidden = self.pre_head(_to(hidden, self._pre_head_device))
        # Mamba keeps its residual stream in float32 and casts it to the head's dtype.
        if self._head_dtype is not None:
            hidden = hidden.to(self._head_dtype)
        logits = self.head(_to(hidden, self._head_device))
        if self.spec.post_head is not None and self.post_value is not None:
            logits = apply_post_head(self.spec.post_head, logits, self.post_value)
        return logits

    def forward_hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """``outputs.hidden_states`` of the backbone alone (no LM head), without a KV cache.

        These are exactly the tensors ``model(..., output_hidden_states=True)``
        returns, and what :meth:`hidden_state` indexes.
        """
        device = _device_of(self.model.get_input_embeddings())
        input_ids = _to(input_ids, device)
        if attention_mask is not None:
            attention_mask = _to(attention_mask, device)
        with torch.no_grad():
            outputs = self.backbone(
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_hidden_states=True,
                use_cache=False,
                return_dict=True,
            )
        hidden_states = tuple(outputs.hidden_states)
        if len(hidden_states) != self.num_layers + 1:
            raise ValueError(
                f"{type(self.model).__name__} returned {len(hidden_states)} hidden states, "
                f"expected num_hidden_layers + 1 = {self.num_layers + 1}; the lens table entry "
                f"for {self.model_type!r} does not match this transformers version"
            )
        return hidden_states

    @contextmanager
    def capture_cosine_states(self) -> Iterator[dict[str, torch.Tensor]]:
        """Record what ``cos_prev`` needs beyond ``hidden_states`` during the forward passes
        inside the ``with`` block; the hooks are removed on exit.

        The yielded dict gets ``"pre_norm"``: the final norm's input, the pre-norm h_L
        (a forward pre-hook on the table's ``final_norm``; absent where that module is None,
        as on OPT-350m); and, for models without an embedding entry (Mamba family),
        ``"embedding"``: the input embeddings' output h_0 (a forward hook). The first call
        of each module is kept. Pass the dict to :meth:`cosine_states`.
        """
        captured: dict[str, torch.Tensor] = {}
        handles = []

        def keep_input(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            captured.setdefault("pre_norm", args[0] if args else next(iter(kwargs.values())))

        def keep_output(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            captured.setdefault("embedding", output)

        if self.norm is not None:
            handles.append(self.norm.register_forward_pre_hook(keep_input, with_kwargs=True))
        embeddings = self.model.get_input_embeddings()
        if not self.spec.embedding_entry and embeddings is not None:
            handles.append(embeddings.register_forward_hook(keep_output))
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def cosine_states(
        self,
        hidden_states: Sequence[torch.Tensor],
        captured: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[int, torch.Tensor]:
        """The state ``cos_prev`` reads at each layer: cos_prev_l = cos(s_l, s_{l-1}).

        s_l = :meth:`hidden_state` (l, un-normed for l < L), except s_L = the pre-norm h_L
        and, for the Mamba family, s_0 = the embedding output, where ``captured`` (from
        :meth:`capture_cosine_states`) holds them. Without them s_L is ``hidden_states[-1]``
        (the final-normed state) and the Mamba family has no s_0 (no cosine at layer 1).
        """
        captured = captured or {}
        states = {layer: self.hidden_state(hidden_states, layer) for layer in self.layer_numbers}
        if "pre_norm" in captured:
            states[self.num_layers] = captured["pre_norm"]
        if not self.spec.embedding_entry and "embedding" in captured:
            states[self.layer_numbers[0] - 1] = captured["embedding"]
        return states


def _to(tensor: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    return tensor if device is None or tensor.device == device else tensor.to(device)


class TunedLens:
    """The tuned lens (Belrose et al. 2023): a learned affine translator per layer, then the
    logit lens's own decode.

        tuned_l(h_l) = decode_l(h_l + A_l h_l + b_l)    for l < L
        tuned_L(h_L) = decode_L(h_L)                    (the identity: the model's own logits)

    ``translators`` holds one ``Linear(d, d)`` (weight A_l, bias b_l) per entry of
    ``outputs.hidden_states`` but the last, indexed as tuned-lens indexes them: translator i
    acts on ``hidden_states[i]`` (= h_i where the model has an embedding entry; h_{i+1} for
    the Mamba family). With A = 0 and b = 0 the tuned lens is the logit lens, bit for bit.
    """

    def __init__(self, lens: LogitLens, translators: torch.nn.ModuleList) -> None:
        if len(translators) != lens.num_layers:
            raise ValueError(
                f"{len(translators)} translators for {lens.model_type!r} with "
                f"{lens.num_layers} layers; the tuned lens needs one per layer 0..L-1"
            )
        self.logit = lens
        self.translators = translators
        self.num_layers = lens.num_layers
        self.layer_numbers = lens.layer_numbers

    def __repr__(self) -> str:
        return f"TunedLens({self.logit!r})"

    def translator_index(self, layer: int) -> int | None:
        """Which translator acts on layer ``layer`` (its ``hidden_states`` index); None at L."""
        self.logit._check_layer(layer)
        if layer == self.num_layers:
            return None
        return layer if self.logit.spec.embedding_entry else layer - 1

    def translate(self, hidden: torch.Tensor, index: int) -> torch.Tensor:
        """h + A h + b with translator ``index``, in the translator's dtype, back in h's dtype."""
        translator = self.translators[index]
        weight = translator.weight
        if weight.device != hidden.device:
            translator.to(hidden.device)
        return hidden + translator(hidden.to(weight.dtype)).to(hidden.dtype)

    def translate_states(self, hidden_states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """``hidden_states`` with translator i applied to entry i (all but the last).

        The logit lens on the translated states is the tuned lens, so extraction runs its
        per-layer reduction unchanged on them (one forward pass serves both lenses).
        """
        last = len(hidden_states) - 1
        return tuple(
            state if index == last else self.translate(state, index)
            for index, state in enumerate(hidden_states)
        )

    def hidden_state(self, hidden_states: Sequence[torch.Tensor], layer: int) -> torch.Tensor:
        """The translated h_layer (h_L unchanged)."""
        hidden = self.logit.hidden_state(hidden_states, layer)
        index = self.translator_index(layer)
        return hidden if index is None else self.translate(hidden, index)

    def decode(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Tuned-lens logits of an untranslated h_layer: ``LogitLens.decode`` of h + A h + b."""
        index = self.translator_index(layer)
        if index is not None:
            hidden = self.translate(hidden, index)
        return self.logit.decode(hidden, layer)

    def forward_hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The untranslated hidden states (:meth:`LogitLens.forward_hidden_states`)."""
        return self.logit.forward_hidden_states(input_ids, attention_mask)
