"""Label-word scores from a PLM, computing the LM head only where and for what is needed.

A plain forward pass projects every position onto the whole vocabulary (for SmolLM2, 49,152
rows at each of ~30 positions) to read two numbers. Here the head sees only the prediction
positions, and only the label words' rows of the output matrix are multiplied. The full
vocabulary is touched only when a true log-probability is required (multi-token words, where
each step's normaliser differs), and then only at those few positions.

It works without knowing architectures by name: a forward hook keeps just the prediction
positions of the trunk's output (so any head transform, e.g. BERT's dense + LayerNorm, runs on
those alone), and a pre-hook on the output embedding takes the head's input and leaves the
full-vocabulary projection nothing to do. ``efficient=False`` gives the plain path, which the
model compares against once at start-up.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from .kv_cache import CACHE_ARGUMENT, get_cache
from .verbalizer import LabelWords


def trunk(model: PreTrainedModel) -> torch.nn.Module:
    """The module whose output feeds the LM head: the decoder stack of an encoder-decoder,
    otherwise the base model (BertModel, LlamaModel, GPT2Model...)."""
    if model.config.is_encoder_decoder:
        return model.get_decoder()
    return model.base_model


@contextmanager
def head_inputs(model: PreTrainedModel, positions: torch.Tensor | None) -> Iterator[dict[str, Any]]:
    """While active, a forward pass of ``model`` stores in the yielded dict, under "hidden",
    the input of its output embedding at ``positions`` (B, P) only (all positions if None)."""
    captured: dict[str, Any] = {}

    def keep_positions(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        index = positions.to(hidden.device)[..., None].expand(-1, -1, hidden.size(-1))
        picked = hidden.gather(1, index)
        if isinstance(output, tuple):
            return (picked, *output[1:])
        output.last_hidden_state = picked
        return output

    def take_input(module, args):
        captured["hidden"] = args[0]
        return (args[0][..., :0, :], *args[1:])

    handles = [model.get_output_embeddings().register_forward_pre_hook(take_input)]
    if positions is not None:
        handles.append(trunk(model).register_forward_hook(keep_positions))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def head_logits(
    model: PreTrainedModel,
    inputs: dict[str, Any],
    positions: torch.Tensor | None,
    rows: torch.Tensor,
    normalise: bool,
    efficient: bool = True,
) -> tuple[torch.Tensor, Any]:
    """Logits of vocabulary ``rows`` at ``positions``: (B, P, R), and the model output.

    ``normalise``: subtract the full-vocabulary logsumexp, giving true log-probabilities.
    """
    if not efficient:
        output = model(**inputs)
        logits = output.logits
        if positions is not None:
            logits = logits.gather(1, positions[..., None].expand(-1, -1, logits.size(-1)))
        if normalise:
            logits = torch.log_softmax(logits.float(), -1)
        return logits[..., rows.to(logits.device)], output
    with head_inputs(model, positions) as captured:
        output = model(**inputs)
    hidden = captured["hidden"]
    projection = model.get_output_embeddings()
    rows = rows.to(hidden.device)
    bias = projection.bias[rows] if getattr(projection, "bias", None) is not None else None
    logits = F.linear(hidden, projection.weight[rows], bias)
    if normalise:
        full = F.linear(hidden, projection.weight, projection.bias).float()
        logits = logits.float() - torch.logsumexp(full, -1, keepdim=True)
    return logits, output


def _unique_rows(token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct vocabulary rows and, for each input id, its column among them."""
    rows, where = torch.unique(torch.tensor(token_ids, dtype=torch.long), return_inverse=True)
    return rows, where


# ----------------------------------------------------------------------------- masked LM

def masked_word_scores(
    model: PreTrainedModel,
    inputs: dict[str, Any],
    positions: torch.Tensor,
    words: LabelWords,
    multi_token: str,
    efficient: bool = True,
) -> torch.Tensor:
    """(B, W) scores at a single mask: a word's first sub-token, or the mean/max over its
    sub-tokens (log-probabilities up to a constant shared by all words, which the class
    normalisation removes)."""
    flat = [t for ids in words.token_ids for t in (ids[:1] if multi_token == "first" else ids)]
    rows, where = _unique_rows(flat)
    logits, _ = head_logits(model, inputs, positions[:, :1], rows, normalise=False, efficient=efficient)
    logits = logits[:, 0]  # (B, R)
    scores, start = [], 0
    for ids in words.token_ids:
        count = 1 if multi_token == "first" else len(ids)
        picked = logits[:, where[start : start + count].to(logits.device)]
        start += count
        scores.append(picked.max(-1).values if multi_token == "max" else picked.mean(-1))
    return torch.stack(scores, -1)


def masked_span_scores(
    model: PreTrainedModel,
    inputs: dict[str, Any],
    positions: torch.Tensor,
    words: LabelWords,
    word_indices: list[int],
    efficient: bool = True,
) -> torch.Tensor:
    """(B, len(word_indices)) log P of words of k tokens at k masks: sum over the masks."""
    span = positions.size(1)
    flat = [t for i in word_indices for t in words.token_ids[i]]
    rows, where = _unique_rows(flat)
    logits, _ = head_logits(model, inputs, positions, rows, normalise=True, efficient=efficient)
    where = where.view(len(word_indices), span).to(logits.device)  # (W', k)
    steps = torch.arange(span, device=logits.device)
    return logits[:, steps[None, :], where].sum(-1)  # (B, W')


# ----------------------------------------------------------------------------- continuations

def _continuation_tensors(word_ids: list[tuple[int, ...]]):
    """For words of several tokens: feed t[0..k-2], predict t[1..k-1] (right-padded)."""
    steps = max(len(ids) for ids in word_ids) - 1
    feed = torch.zeros(len(word_ids), steps, dtype=torch.long)
    target = torch.zeros(len(word_ids), steps, dtype=torch.long)
    valid = torch.zeros(len(word_ids), steps, dtype=torch.bool)
    for i, ids in enumerate(word_ids):
        n = len(ids) - 1
        feed[i, :n] = torch.tensor(ids[:-1])
        target[i, :n] = torch.tensor(ids[1:])
        valid[i, :n] = True
    return feed, target, valid


def _sum_targets(logits: torch.Tensor, where: torch.Tensor, valid: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*W', steps, R) log-probs -> (B, W') summed over each word's valid steps."""
    count = valid.size(0)
    columns = torch.zeros(valid.shape, dtype=torch.long)
    columns[valid] = where
    columns = columns.repeat(batch, 1).to(logits.device)
    picked = logits.gather(2, columns[..., None]).squeeze(-1)
    picked = picked.masked_fill(~valid.repeat(batch, 1).to(logits.device), 0.0)
    return picked.sum(-1).view(batch, count)


def _chunks(items: list[int], batch: int, chunk_rows: int) -> list[list[int]]:
    per_chunk = max(1, chunk_rows // max(batch, 1))
    return [items[i : i + per_chunk] for i in range(0, len(items), per_chunk)]


# ----------------------------------------------------------------------------- causal LM

def causal_word_scores(
    model: PreTrainedModel,
    inputs: dict[str, Any],
    positions: torch.Tensor,
    words: LabelWords,
    efficient: bool = True,
    chunk_rows: int = 1024,
) -> torch.Tensor:
    """(B, W) log P(word | text before the mask), every token of the word counted.

    One pass over the batch reads every word's first token at the last prefix position.
    Words of several tokens then continue from the cached prefix (B x words rows holding
    only their own tokens), so the prefix is computed once, not once per class.
    """
    multi = [i for i, ids in enumerate(words.token_ids) if len(ids) > 1]
    rows, where = _unique_rows([ids[0] for ids in words.token_ids])
    logits, output = head_logits(
        model, {**inputs, "use_cache": bool(multi)}, positions, rows, bool(multi), efficient
    )
    scores = logits[:, 0, where.to(logits.device)]  # (B, W)
    if not multi:
        return scores
    mask = inputs["attention_mask"]
    chunks = _chunks(multi, mask.size(0), chunk_rows)
    extra = []
    for n, chunk in enumerate(chunks):
        cache = get_cache(output)
        if n < len(chunks) - 1:
            cache = copy.deepcopy(cache)  # the pass below extends and reorders it in place
        extra.append(_causal_continuation(model, cache, mask, [words.token_ids[i] for i in chunk], efficient))
    columns = torch.tensor(multi, device=scores.device)
    return scores.index_add(1, columns, torch.cat(extra, -1).to(scores.dtype))


def _causal_continuation(model, cache, prefix_mask, word_ids, efficient) -> torch.Tensor:
    batch, count, device = prefix_mask.size(0), len(word_ids), prefix_mask.device
    feed, target, valid = _continuation_tensors(word_ids)
    steps = feed.size(1)
    cache.reorder_cache(torch.arange(batch, device=device).repeat_interleave(count))
    attention = torch.cat([prefix_mask.repeat_interleave(count, 0), valid.repeat(batch, 1).long().to(device)], 1)
    start = prefix_mask.sum(1).repeat_interleave(count)[:, None]
    inputs = {
        "input_ids": feed.repeat(batch, 1).to(device),
        "attention_mask": attention,
        "position_ids": start + torch.arange(steps, device=device),
        CACHE_ARGUMENT: cache,
        "use_cache": True,
    }
    rows, where = _unique_rows(target[valid].tolist())
    logits, _ = head_logits(model, inputs, None, rows, True, efficient)
    return _sum_targets(logits, where, valid, batch)


# ----------------------------------------------------------------------------- seq2seq

def answer_prefix(model: PreTrainedModel, sentinel_id: int, rows: int, device: torch.device) -> torch.Tensor:
    """(rows, 2) decoder ids ``<start> <sentinel>``: T5 answers a sentinel's span after them, so
    the word sits at decoder position 1 (every reader of a seq2seq mask starts from this)."""
    start = model.config.decoder_start_token_id
    if start is None:
        raise ValueError("the model config has no decoder_start_token_id")
    return torch.tensor([[start, sentinel_id]], device=device).expand(rows, 2)


def seq2seq_word_scores(
    model: PreTrainedModel,
    inputs: dict[str, Any],
    sentinel_id: int,
    words: LabelWords,
    efficient: bool = True,
    chunk_rows: int = 1024,
) -> torch.Tensor:
    """(B, W) log P(word | encoder input with a sentinel), T5's span-filling answer format:
    the decoder reads <start> <extra_id_0> and continues with the word."""
    mask = inputs["attention_mask"]
    encoder_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "inputs_embeds", "attention_mask")}
    encoded = model.get_encoder()(**encoder_inputs)
    batch, device = mask.size(0), mask.device
    prefix = answer_prefix(model, sentinel_id, batch, device)
    multi = [i for i, ids in enumerate(words.token_ids) if len(ids) > 1]
    rows, where = _unique_rows([ids[0] for ids in words.token_ids])
    answer = torch.ones(batch, 1, dtype=torch.long, device=device)
    first_inputs = {"encoder_outputs": encoded, "attention_mask": mask, "decoder_input_ids": prefix, "use_cache": False}
    logits, _ = head_logits(model, first_inputs, answer, rows, bool(multi), efficient)
    scores = logits[:, 0, where.to(logits.device)]
    if not multi:
        return scores
    extra = []
    for chunk in _chunks(multi, batch, chunk_rows):
        word_ids = [words.token_ids[i] for i in chunk]
        count = len(word_ids)
        feed, target, valid = _continuation_tensors(word_ids)
        select = torch.arange(batch, device=device).repeat_interleave(count)
        decoder_ids = torch.cat([prefix[select], feed.repeat(batch, 1).to(device)], 1)
        decoder_mask = torch.cat([torch.ones_like(prefix[select]), valid.repeat(batch, 1).long().to(device)], 1)
        repeated = type(encoded)(last_hidden_state=encoded.last_hidden_state[select])
        step_inputs = {
            "encoder_outputs": repeated,
            "attention_mask": mask[select],
            "decoder_input_ids": decoder_ids,
            "decoder_attention_mask": decoder_mask,
            "use_cache": False,
        }
        steps = torch.arange(2, 2 + feed.size(1), device=device).expand(batch * count, -1)
        rows_c, where_c = _unique_rows(target[valid].tolist())
        step_logits, _ = head_logits(model, step_inputs, steps, rows_c, True, efficient)
        extra.append(_sum_targets(step_logits, where_c, valid, batch))
    columns = torch.tensor(multi, device=scores.device)
    return scores.index_add(1, columns, torch.cat(extra, -1).to(scores.dtype))
