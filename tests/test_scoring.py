"""Efficient scoring equals the model's own logits, for every family, computed by hand here."""

import math

import pytest
import torch

from deltaprompt import Example, PromptModel, Verbalizer
from deltaprompt.scoring import causal_word_scores

from .conftest import tiny_plm

EXAMPLES = [
    Example("the movie was great"),
    Example("a terrible boring film with a dull plot and the acting was wonderful"),
    Example("film"),
]
WORDS = {"negative": ["terrible", "boring"], "positive": ["great"], "neutral": "film"}
TEMPLATE = {"masked": "{text} It was {mask}.", "causal": "{text} It was {mask}", "seq2seq": "{text} It was {mask}."}


def by_hand_word_log_probs(model: PromptModel, example: Example) -> list[float]:
    """log P(word) for one example, unbatched and unpadded, from ``model(...).logits``."""
    plm, words = model.plm, model.label_words
    (enc,) = model.prompt_tokenizer.encode([example])
    ids = torch.tensor([enc.input_ids])
    out = []
    with torch.no_grad():
        for token_ids in words.token_ids:
            if plm.family == "masked":
                logits = plm.model(input_ids=ids).logits[0, enc.predict_positions[0]]
                out.append(torch.log_softmax(logits, -1)[token_ids[0]].item())
            elif plm.family == "causal":
                full = torch.tensor([enc.input_ids + list(token_ids)])
                log_probs = torch.log_softmax(plm.model(input_ids=full).logits[0], -1)
                start = len(enc.input_ids) - 1
                out.append(sum(log_probs[start + j, t].item() for j, t in enumerate(token_ids)))
            else:
                sentinel = model.prompt_tokenizer.mask_id
                decoder = [plm.model.config.decoder_start_token_id, sentinel, *token_ids[:-1]]
                logits = plm.model(input_ids=ids, decoder_input_ids=torch.tensor([decoder])).logits[0]
                log_probs = torch.log_softmax(logits, -1)
                out.append(sum(log_probs[1 + j, t].item() for j, t in enumerate(token_ids)))
    return out


def by_hand_class_log_probs(model: PromptModel, example: Example) -> torch.Tensor:
    """Mean of each class's word probabilities, normalised over classes."""
    scores = torch.tensor(by_hand_word_log_probs(model, example))
    classes = []
    for c in range(len(model.classes)):
        mine = scores[model.label_words.word_class == c]
        classes.append(torch.logsumexp(mine, 0) - math.log(len(mine)))
    return torch.log_softmax(torch.stack(classes), 0)


def run(model: PromptModel, examples, efficient=None) -> torch.Tensor:
    batch = model.collate(model.encode(examples))
    with torch.no_grad():
        return model.verbalizer.aggregate(model.word_scores(batch, efficient=efficient), model.label_words)


def test_efficient_scores_equal_plain_logits_for_every_family(any_tiny_plm):
    plm = any_tiny_plm
    model = PromptModel(plm, TEMPLATE[plm.family], Verbalizer(WORDS, multi_token="first"))
    assert model.efficient_head  # the start-up self-check agreed
    batched = run(model, EXAMPLES)  # padded batch of three lengths
    for row, example in zip(batched, EXAMPLES, strict=True):
        torch.testing.assert_close(row, by_hand_class_log_probs(model, example), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(batched, run(model, EXAMPLES, efficient=False), atol=2e-5, rtol=1e-4)


def test_efficient_head_never_projects_onto_the_whole_vocabulary(any_tiny_plm):
    plm = any_tiny_plm
    candidates = ["great", "film", "movie", "the", "a", "was", "it", "s", "t"]
    single = [w for w in candidates if len(plm.tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]
    model = PromptModel(plm, TEMPLATE[plm.family], Verbalizer({"a": single[0], "b": single[1]}))
    shapes = []
    handle = plm.model.get_output_embeddings().register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    try:
        run(model, EXAMPLES)
    finally:
        handle.remove()
    assert shapes and all(shape[-2] == 0 for shape in shapes)  # no position reached the full projection


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_multi_token_words_on_a_decoder_equal_the_sum_of_token_log_probs(kind, request):
    tokenizer = request.getfixturevalue(f"{kind}_tokenizer")
    plm = tiny_plm(kind, tokenizer)
    words = {"negative": ["unwatchable", "terrible"], "positive": ["extraordinarily good", "great"]}
    model = PromptModel(plm, "Review: {text}\nSentiment: {mask}", Verbalizer(words))
    lengths = [len(ids) for ids in model.label_words.token_ids]
    assert max(lengths) >= 3 and min(lengths) <= 2  # genuinely multi-token, of mixed lengths
    batch = model.collate(model.encode(EXAMPLES))
    with torch.no_grad():
        scores = model.word_scores(batch)
        # Chunked continuation (one word per chunk) must give the same numbers.
        inputs = model.embed(batch)
        chunked = causal_word_scores(plm.model, inputs, batch["predict_positions"], model.label_words, chunk_rows=1)
    for row, example in zip(scores, EXAMPLES, strict=True):
        torch.testing.assert_close(row, torch.tensor(by_hand_word_log_probs(model, example)), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(chunked, scores, atol=2e-5, rtol=1e-4)


def test_multi_token_words_on_t5_equal_the_sum_of_token_log_probs(t5_tokenizer):
    plm = tiny_plm("t5", t5_tokenizer)
    model = PromptModel(plm, "{text} It was {mask}.", Verbalizer({"a": ["wonderful", "unwatchable"], "b": ["great", "superb"]}))
    assert max(len(ids) for ids in model.label_words.token_ids) > 1
    scores = run_words(model, EXAMPLES)
    for row, example in zip(scores, EXAMPLES, strict=True):
        torch.testing.assert_close(row, torch.tensor(by_hand_word_log_probs(model, example)), atol=2e-5, rtol=1e-4)


def run_words(model, examples):
    batch = model.collate(model.encode(examples))
    with torch.no_grad():
        return model.word_scores(batch)


def test_masked_lm_one_mask_per_sub_token(roberta_tokenizer):
    plm = tiny_plm("roberta", roberta_tokenizer)
    words = {"negative": ["terrible", "unwatchable"], "positive": ["wonderful", "superb"]}
    model = PromptModel(plm, "{text} It was {mask}.", Verbalizer(words, multi_token="masks"))
    lengths = {len(ids) for ids in model.label_words.token_ids}
    assert len(lengths) > 1  # words of different lengths: one pass per length
    scores = run_words(model, EXAMPLES)
    for row, example in zip(scores, EXAMPLES, strict=True):
        for w, token_ids in enumerate(model.label_words.token_ids):
            (enc,) = model.prompt_tokenizer.encode([example], mask_span=len(token_ids))
            with torch.no_grad():
                logits = plm.model(input_ids=torch.tensor([enc.input_ids])).logits[0]
            log_probs = torch.log_softmax(logits[enc.predict_positions], -1)
            expected = sum(log_probs[j, t] for j, t in enumerate(token_ids))
            torch.testing.assert_close(row[w], expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("rule", ["mean", "max"])
def test_masked_lm_mean_and_max_over_sub_tokens_at_one_mask(roberta_tokenizer, rule):
    plm = tiny_plm("roberta", roberta_tokenizer)
    model = PromptModel(plm, "{text} It was {mask}.", Verbalizer({"n": "unwatchable", "p": "superb"}, multi_token=rule))
    assert min(len(ids) for ids in model.label_words.token_ids) > 1
    batched = run(model, EXAMPLES)
    for row, example in zip(batched, EXAMPLES, strict=True):
        (enc,) = model.prompt_tokenizer.encode([example])
        with torch.no_grad():
            logits = plm.model(input_ids=torch.tensor([enc.input_ids])).logits[0, enc.predict_positions[0]]
        per_word = [
            getattr(logits[list(ids)], rule)() if rule == "mean" else logits[list(ids)].max()
            for ids in model.label_words.token_ids
        ]
        torch.testing.assert_close(row, torch.log_softmax(torch.stack(per_word), 0), atol=2e-5, rtol=1e-4)


def test_text_initialised_soft_tokens_start_equal_to_their_text(any_tiny_plm):
    plm = any_tiny_plm
    hard = PromptModel(plm, TEMPLATE[plm.family], Verbalizer(WORDS))
    soft_template = TEMPLATE[plm.family].replace("It was", '{"soft": "It was"}')
    soft = PromptModel(plm, soft_template, Verbalizer(WORDS))
    assert soft.soft_embeddings is not None and soft.soft_embeddings.shape[0] == soft.prompt_tokenizer.num_soft_tokens
    torch.testing.assert_close(run(soft, EXAMPLES), run(hard, EXAMPLES), atol=2e-5, rtol=1e-4)
    # The model reads the soft vectors: the class scores depend on every one of them.
    soft(soft.collate(soft.encode(EXAMPLES)))[:, 0].sum().backward()
    assert soft.soft_embeddings.grad is not None
    assert (soft.soft_embeddings.grad.abs().sum(-1) > 0).all()


def test_models_with_extra_logit_processing_fall_back_to_the_plain_path(gpt2_tokenizer, caplog):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    original_forward = plm.model.forward
    bias = torch.zeros(len(gpt2_tokenizer))
    bias[gpt2_tokenizer(" great", add_special_tokens=False)["input_ids"][0]] = 5.0

    def forward_with_final_bias(*args, **kwargs):  # like BART's final_logits_bias
        output = original_forward(*args, **kwargs)
        output.logits = output.logits + bias
        return output

    plm.model.forward = forward_with_final_bias
    model = PromptModel(plm, "{text} It was {mask}", Verbalizer({"n": "terrible", "p": "great"}))
    assert model.efficient_head is False
    assert "disagrees" in caplog.text
    torch.testing.assert_close(run(model, EXAMPLES), run(model, EXAMPLES, efficient=False))
