"""The bottleneck module, and where adapters go, read from the model's structure.

Transformer layers are found as the entries of a ``ModuleList`` of identical modules that
contain an attention module; inside a layer, the attention output projection is the last
linear layer of an attention module that returns the hidden size, and the feed-forward output
projection the last such linear layer outside attention. That holds for BERT/RoBERTa
(``attention.output.dense``, ``output.dense``), GPT-2 (``attn.c_proj``, ``mlp.c_proj``, both
``Conv1D``), Llama (``self_attn.o_proj``, ``mlp.down_proj``) and T5 (``SelfAttention.o``,
``EncDecAttention.o``, ``DenseReluDense.wo``) without naming any of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU}


class Bottleneck(nn.Module):
    """``h + up(f(down(h)))``. ``up`` starts at zero, so the adapted model starts exactly as the
    base model; ``down`` is drawn as in Houlsby et al. (normal, std 1e-2, truncated at 2 std)."""

    def __init__(
        self,
        features: int,
        width: int,
        non_linearity: str,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.down = nn.Linear(features, width, device=device, dtype=dtype)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(width, features, device=device, dtype=dtype)
        with torch.no_grad():
            nn.init.trunc_normal_(self.down.weight, std=1e-2, a=-2e-2, b=2e-2)
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


class AdapterHook:
    """Forward hook passing a projection's output through an adapter (the HF module and its
    parameter names stay as they are)."""

    def __init__(self, adapter: Bottleneck):
        self.adapter = adapter

    def __call__(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return self.adapter(output)


# ----------------------------------------------------------------------------- structure

def _linear_types() -> tuple[type[nn.Module], ...]:
    from transformers.pytorch_utils import Conv1D  # GPT-2's transposed linear layer

    return (nn.Linear, Conv1D)


def base_layer(module: nn.Module) -> nn.Module:
    """The layer inside PEFT's wrappers (``lora.Linear.base_layer``), or the module itself."""
    while isinstance(getattr(module, "base_layer", None), nn.Module):
        module = module.base_layer
    return module


def out_features(module: nn.Module) -> int | None:
    """Output width of a linear layer (``nn.Linear``, ``Conv1D``, or one wrapped by PEFT);
    None for anything else."""
    base = base_layer(module)
    if not isinstance(base, _linear_types()):
        return None
    return base.weight.shape[0] if isinstance(base, nn.Linear) else base.weight.shape[1]


def projections(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Linear layers below ``module`` in registration order (a wrapped one once, as its wrapper)."""
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if out_features(child) is not None:
            yield path, child
        else:
            yield from projections(child, path + ".")


def is_attention(module: nn.Module) -> bool:
    return "attention" in type(module).__name__.lower()


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and models' own norm classes (``T5LayerNorm``, ``LlamaRMSNorm``)."""
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)):
        return True
    return (
        "norm" in type(module).__name__.lower()
        and not any(True for _ in module.children())
        and isinstance(getattr(module, "weight", None), nn.Parameter)
    )


def blocks(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The transformer layers: entries of every outermost ``ModuleList`` whose entries share one
    type and contain an attention module (BERT's ``encoder.layer``, T5's ``encoder.block`` and
    ``decoder.block``...)."""
    found: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        path = f"{prefix}{name}"
        if (
            isinstance(child, nn.ModuleList)
            and len(child) > 0
            and len({type(entry) for entry in child}) == 1
            and any(is_attention(m) for m in child[0].modules())
        ):
            found.extend((f"{path}.{i}", entry) for i, entry in enumerate(child))
        else:
            found.extend(blocks(child, path + "."))
    return found


def attention_modules(block: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The outermost attention modules of a layer, in order: self-attention first, then any
    cross-attention."""
    found: list[tuple[str, nn.Module]] = []
    for name, child in block.named_children():
        path = f"{prefix}{name}"
        if is_attention(child):
            found.append((path, child))
        elif out_features(child) is None:
            found.extend(attention_modules(child, path + "."))
    return found


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream: the config's (GPT-2's n_embd and T5's d_model are mapped to
    ``hidden_size`` by transformers), else the input embeddings'."""
    size = getattr(getattr(model, "config", None), "hidden_size", None)
    if isinstance(size, int):
        return size
    return model.get_input_embeddings().embedding_dim  # type: ignore[operator]


def layer_sites(block: nn.Module, hidden: int) -> dict[str, tuple[str, nn.Module]]:
    """``{"attention" | "cross_attention" | "ffn": (path in block, projection)}`` for one layer:
    the last linear layer returning ``hidden`` features inside the first attention module, the
    second one, and outside attention."""
    sites: dict[str, tuple[str, nn.Module]] = {}
    attentions = attention_modules(block)
    inside: set[int] = set()
    for index, (path, attention) in enumerate(attentions[:2]):
        found = [(f"{path}.{p}", m) for p, m in projections(attention) if out_features(m) == hidden]
        if found:
            sites["attention" if index == 0 else "cross_attention"] = found[-1]
    for _, attention in attentions:
        inside.update(id(m) for m in attention.modules())
    outside = [(p, m) for p, m in projections(block) if id(m) not in inside and out_features(m) == hidden]
    if outside:
        sites["ffn"] = outside[-1]
    return sites


def find_sites(model: nn.Module, positions: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """``(module path, projection)`` for every layer and requested position, in model order.

    "cross_attention" applies only to layers that have one (an encoder-decoder's decoder);
    the other positions must be found in every layer, else the model is refused.
    """
    layers = blocks(model)
    if not layers:
        raise ValueError(
            f"found no transformer layers in {type(model).__name__} (a ModuleList of identical "
            "modules containing attention); adapters cannot be placed"
        )
    hidden = hidden_size(model)
    found: list[tuple[str, nn.Module]] = []
    for path, block in layers:
        sites = layer_sites(block, hidden)
        for position in positions:
            if position in sites:
                inner, module = sites[position]
                found.append((f"{path}.{inner}", module))
            elif position != "cross_attention":
                raise ValueError(
                    f"found no {position} output projection (a linear layer returning {hidden} "
                    f"features) in layer {path} ({type(block).__name__})"
                )
    if not found:
        raise ValueError(f"{type(model).__name__} has no layer with {' or '.join(positions)}")
    return found


def site_key(path: str) -> str:
    """A module path as a ``ModuleDict`` key (no dots): ``a.b.0.c`` -> ``a-b-0-c``."""
    return path.replace(".", "-")


def first_weight(module: nn.Module) -> torch.Tensor:
    return base_layer(module).weight  # type: ignore[return-value]
