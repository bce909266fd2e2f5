"""Trained classifiers as small, self-describing folders::

    model/
      deltaprompt.json       how to rebuild it: base model id and weight fingerprint, template,
                             verbalizer or head, delta methods and their configs
      weights.safetensors    only what was trained (soft prompts, delta weights, head)
      peft/<method>/         the same weights as a PEFT adapter, for methods PEFT has

The base model is not copied: loading fetches it again by its id and refuses to go on when
its weights are not the ones the classifier was trained on (a sampled fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT = "deltaprompt"
VERSION = 1
DESCRIPTION = "deltaprompt.json"
WEIGHTS = "weights.safetensors"
_SAMPLES = 4096  # values read per tensor for the fingerprint


class ArtifactError(ValueError):
    """A saved classifier that cannot be loaded as asked (wrong base model, damaged folder)."""


def fingerprint(model: nn.Module) -> str:
    """A short hash of a model's weights: names, shapes and up to 4,096 evenly spaced values of
    every tensor, rounded to bfloat16 so loading in float32 or bfloat16 gives the same print.
    Cheap even for billion-parameter models, and any other checkpoint differs."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not torch.is_floating_point(tensor):
            continue
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLES)
        sample = flat[::step][:_SAMPLES].to("cpu", torch.bfloat16).view(torch.int16)
        digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:20]


def write(
    directory: str | os.PathLike[str],
    description: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    extras: Callable[[Path], None] | None = None,
) -> Path:
    """Write a classifier folder atomically: everything goes to a temporary sibling first,
    which then takes the folder's place, so a crash leaves the old version or the new one."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file({n: t.detach().to("cpu").contiguous() for n, t in tensors.items()}, str(staging / WEIGHTS))
        if extras is not None:
            extras(staging)
        body = {"format": FORMAT, "version": VERSION, **description}
        (staging / DESCRIPTION).write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
        old = None
        if target.exists():
            if not (target / DESCRIPTION).exists() and any(target.iterdir()):
                raise ArtifactError(f"{target} exists and is not a saved classifier; refusing to replace it")
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The description and the trained tensors of a classifier folder."""
    folder = Path(directory)
    path = folder / DESCRIPTION
    if not path.exists():
        raise ArtifactError(f"{folder} is not a saved classifier: it has no {DESCRIPTION}")
    description = json.loads(path.read_text())
    if description.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a deltaprompt description")
    if description.get("version", 0) > VERSION:
        raise ArtifactError(
            f"{folder} was saved by a newer deltaprompt (format {description['version']}); upgrade to load it"
        )
    return description, load_file(str(folder / WEIGHTS))


def check_base(description: dict[str, Any], model: nn.Module) -> None:
    """Refuse a base model whose weights differ from those the classifier was trained on."""
    base = description["base_model"]
    found = fingerprint(model)
    if base.get("fingerprint") and found != base["fingerprint"]:
        raise ArtifactError(
            f"this classifier was trained on {base.get('name') or 'another model'!r} with weight "
            f"fingerprint {base['fingerprint']}, but the model given has fingerprint {found}: its "
            "weights differ (another checkpoint, revision or fine-tuned copy). Load the exact base "
            "model it was trained on."
        )
