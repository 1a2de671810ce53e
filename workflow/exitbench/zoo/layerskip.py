"""LayerSkip training (Elhoushi et al. 2024, arXiv 2404.16710) for a zoo run with ``early_exit``:
layer dropout whose rate rises with depth, and an early-exit loss through the model's own final
norm and head at every layer. The zoo's positive control (``llama-s-ee``) trains this way.

With L blocks indexed l = 0..L−1 (block l's output is lens layer l + 1), training step t of T
(1-based) and p_max = ``layer_dropout``:

* **layer dropout**: block l is skipped (h stays) for a sample with probability
  p_{l,t} = S(t) · D(l) · p_max, drawn per sample and step from a generator seeded by the
  run's seed, during training only. D(l) = exp(l·ln2/(L−1)) − 1 (``exponential``, the
  paper's) or l/(L−1) (``linear``), both 0 at the first block and 1 at the last;
  S(t) = exp((t−1)·ln2/(T−1)) − 1 (``exponential``, the paper's from-scratch schedule) or 1
  (``constant``).
* **early-exit loss**: J = Σ_l ẽ_l · CE(decode_{l+1}(h_{l+1}), y) with
  ẽ_l = C(t,l)·e(l) / Σ_i C(t,i)·e(i), e(l) = e_scale·Σ_{i=0}^{l} i for l < L−1 and
  e(L−1) = (L−1) + e_scale·Σ_{i=0}^{L−2} i (the paper's; ``loss_scale`` is e_scale), so the
  weight rises with depth and the final layer keeps the largest share. decode_l is
  :meth:`exitbench.lens.LogitLens.decode`, the very lens the benchmark measures with.
  Curriculum C: ``none`` (every layer, every step) or ``rotational`` (the paper's
  C_rot,R: layer l only when (l + t) mod R = 0; the last layer always), which cuts the
  extra head calls by R.

The final layer's cross entropy alone is the logged loss (``loss.csv``, ``final_loss``), so it
compares with a plain run's.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where used, so Snakefiles import this module quickly
    import torch

__all__ = [
    "EarlyExitTraining",
    "add_layer_dropout",
    "dropout_rates",
    "early_exit_weights",
    "layer_dropout",
]


def dropout_rates(
    num_layers: int,
    p_max: float,
    step: int = 1,
    steps: int = 1,
    depth_scale: str = "exponential",
    time_scale: str = "constant",
) -> list[float]:
    """p_{l,t} = S(t)·D(l)·p_max for blocks l = 0..L−1 at step ``step`` of ``steps`` (module
    docstring): 0 at the first block, S(t)·p_max at the last."""
    if num_layers == 1:
        depth = [1.0]
    elif depth_scale == "linear":
        depth = [layer / (num_layers - 1) for layer in range(num_layers)]
    elif depth_scale == "exponential":
        depth = [
            math.exp(layer * math.log(2) / (num_layers - 1)) - 1 for layer in range(num_layers)
        ]
    else:
        raise ValueError(f"unknown dropout depth scale {depth_scale!r}")
    if time_scale == "constant" or steps <= 1:
        time = 1.0
    elif time_scale == "exponential":
        time = math.exp((step - 1) * math.log(2) / (steps - 1)) - 1
    else:
        raise ValueError(f"unknown dropout time scale {time_scale!r}")
    return [time * value * p_max for value in depth]


def early_exit_weights(
    num_layers: int,
    loss_scale: float,
    step: int = 1,
    curriculum: str = "none",
    rotation: int = 1,
) -> list[float]:
    """ẽ_l for blocks l = 0..L−1 (lens layers 1..L), summing to 1 (module docstring)."""
    triangle = [loss_scale * layer * (layer + 1) / 2 for layer in range(num_layers)]
    scale = triangle[:-1] + [(num_layers - 1) + (triangle[-2] if num_layers > 1 else 0.0)]
    if curriculum == "rotational":
        enabled = [(layer + step) % rotation == 0 for layer in range(num_layers - 1)] + [True]
    elif curriculum == "none":
        enabled = [True] * num_layers
    else:
        raise ValueError(f"unknown early-exit curriculum {curriculum!r}")
    weights = [value if on else 0.0 for value, on in zip(scale, enabled, strict=True)]
    total = sum(weights)
    if total <= 0:  # one layer, or e_scale 0 with every inner layer off: the final loss alone
        return [0.0] * (num_layers - 1) + [1.0]
    return [value / total for value in weights]


def add_layer_dropout(blocks: Any, rate: Callable[[int], tuple]) -> list[Any]:
    """Forward hooks that skip block l (its output := its input hidden state) for each sample
    with probability p while the block is in training mode, ``(p, torch.Generator) =
    rate(l)`` asked at each forward. Returns the hook handles; remove them to get the plain
    model back (hooks never touch the weights, so a saved model is the plain architecture)."""
    import torch

    def hook(index: int):
        def skip(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            probability, generator = rate(index)
            if not module.training or probability <= 0:
                return None
            hidden_in = args[0] if args else kwargs["hidden_states"]
            hidden_out = output[0] if isinstance(output, tuple) else output
            keep = torch.rand(hidden_in.shape[0], generator=generator) >= probability
            mixed = torch.where(keep.view(-1, *([1] * (hidden_in.ndim - 1))), hidden_out, hidden_in)
            return (mixed, *output[1:]) if isinstance(output, tuple) else mixed

        return skip

    # prepend: run before transformers' output-capturing hooks, so that hidden_states records
    # the stream the next block really reads (a model that already returned hidden states
    # has those hooks registered first)
    return [
        block.register_forward_hook(hook(index), with_kwargs=True, prepend=True)
        for index, block in enumerate(blocks)
    ]


@contextlib.contextmanager
def layer_dropout(blocks: Any, rate: Callable[[int], tuple]) -> Iterator[None]:
    """:func:`add_layer_dropout` for the duration of the ``with`` block."""
    handles = add_layer_dropout(blocks, rate)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class EarlyExitTraining:
    """A run's LayerSkip settings (``zoo.runs.<run>.early_exit``, defaults filled) bound to
    its model: construction installs the layer dropout on its blocks (active in training mode
    only), :meth:`loss` is the training loss of a step, :meth:`remove_hooks` ends it."""

    model: Any
    settings: dict[str, Any]
    steps: int
    seed: int

    def __post_init__(self) -> None:
        import torch

        from exitbench.architectures import module_at
        from exitbench.lens import LogitLens

        self.lens = LogitLens.from_model(self.model)
        self.blocks = module_at(self.model, self.lens.spec.blocks)
        self.num_layers = self.lens.num_layers
        self.generator = torch.Generator().manual_seed(self.seed)
        self._rates = self.rates(1)
        self._handles = add_layer_dropout(
            self.blocks, lambda index: (self._rates[index], self.generator)
        )

    def remove_hooks(self) -> None:
        """Take the layer dropout off the model's blocks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def rates(self, step: int) -> list[float]:
        """Layer dropout rates of blocks 0..L−1 at ``step``."""
        return dropout_rates(
            self.num_layers,
            self.settings["layer_dropout"],
            step,
            self.steps,
            self.settings["dropout_depth_scale"],
            self.settings["dropout_time_scale"],
        )

    def weights(self, step: int) -> list[float]:
        """Early-exit loss weights ẽ of lens layers 1..L at ``step``."""
        return early_exit_weights(
            self.num_layers,
            self.settings["loss_scale"],
            step,
            self.settings["curriculum"],
            self.settings["rotation"],
        )

    def loss(self, batch: torch.Tensor, step: int, moe_coef: float | None = None) -> tuple:
        """(training loss J (+ the MoE load-balancing term), the final layer's cross entropy)
        of one batch at ``step``."""
        import torch

        self._rates = self.rates(step)
        kwargs = {"output_router_logits": True} if moe_coef is not None else {}
        outputs = self.model(input_ids=batch, use_cache=False, output_hidden_states=True, **kwargs)
        targets = batch[:, 1:].reshape(-1)
        total, final = 0.0, None
        for layer, weight in enumerate(self.weights(step), start=1):
            if weight == 0 and layer != self.num_layers:
                continue
            if layer == self.num_layers:
                logits = outputs.logits  # = lens.decode(hidden_states[-1], L), bit for bit
            else:
                logits = self.lens.decode(
                    self.lens.hidden_state(outputs.hidden_states, layer), layer
                )
            logits = logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), targets
            )
            total = total + weight * loss
            if layer == self.num_layers:
                final = loss
        if moe_coef is not None and getattr(outputs, "aux_loss", None) is not None:
            total = total + moe_coef * outputs.aux_loss
        return total, final
