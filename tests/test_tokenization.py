"""Tokenisation: family wrapping, truncation of shortenable parts only, dynamic padding."""

import pytest
import torch

from deltaprompt import Example, Template
from deltaprompt.tokenization import PromptTokenizer, plan_truncation

# ----------------------------------------------------------------------------- plan_truncation


def lengths_after(lengths, shortenable, excess, strategy):
    cuts = plan_truncation(lengths, shortenable, excess, strategy)
    return [n - a - b for n, (a, b) in zip(lengths, cuts, strict=True)], cuts


def test_longest_first_evens_out_the_long_parts():
    after, cuts = lengths_after([10, 5, 3], [True, False, True], 6, "longest_first")
    assert after == [4, 5, 3]
    assert cuts[1] == (0, 0)
    after, _ = lengths_after([8, 8], [True, True], 3, "longest_first")
    assert sorted(after) == [6, 7] and sum(after) == 13
    after, _ = lengths_after([9, 2, 7], [True, True, True], 10, "longest_first")
    assert after == [3, 2, 3]  # the short part is untouched until the others come down to it
    after, _ = lengths_after([2, 1], [True, True], 3, "longest_first")
    assert after == [0, 0]


def test_head_keeps_the_beginning_and_tail_keeps_the_end():
    after, cuts = lengths_after([4, 1, 6], [True, False, True], 8, "head")
    assert after == [2, 1, 0]
    assert cuts == [(0, 2), (0, 0), (0, 6)]  # removed from the ends, last part first
    after, cuts = lengths_after([4, 1, 6], [True, False, True], 5, "tail")
    assert after == [0, 1, 5]
    assert cuts == [(4, 0), (0, 0), (1, 0)]  # removed from the starts, first part first


def test_nothing_to_cut_when_it_fits():
    assert plan_truncation([3, 4], [True, True], 0) == [(0, 0), (0, 0)]


def test_too_long_fixed_parts_raise():
    with pytest.raises(ValueError, match="shortenable parts hold only 3"):
        plan_truncation([3, 20], [True, False], 5)
    with pytest.raises(ValueError, match="truncation must be one of"):
        plan_truncation([3], [True], 1, "middle")


# ----------------------------------------------------------------------------- wrapping per family


def test_masked_lm_wrapping_with_real_bert_tokenizer(bert_tokenizer):
    tok = bert_tokenizer
    encoder = PromptTokenizer(tok, Template("{text} It was {mask}."), "masked")
    (enc,) = encoder.encode([Example("A great film")])
    tokens = tok.convert_ids_to_tokens(enc.input_ids)
    assert tokens == ["[CLS]", "a", "great", "film", "it", "was", "[MASK]", ".", "[SEP]"]
    assert enc.predict_positions == [6]
    assert enc.input_ids == tok("A great film It was [MASK].")["input_ids"]


def test_causal_lm_stops_at_the_mask_and_predicts_from_the_last_token(llama_tokenizer):
    tok = llama_tokenizer
    with pytest.warns(UserWarning, match="ignored"):
        encoder = PromptTokenizer(tok, Template("Review: {text}\nSentiment: {mask}. {text_b}"), "causal")
    (enc,) = encoder.encode([Example("Great!", "never seen")])
    assert enc.input_ids == tok("Review: Great!\nSentiment:")["input_ids"]
    assert enc.predict_positions == [len(enc.input_ids) - 1]


def test_seq2seq_puts_a_sentinel_where_the_mask_is(t5_tokenizer):
    tok = t5_tokenizer
    encoder = PromptTokenizer(tok, Template("{text} It was {mask}."), "seq2seq")
    (enc,) = encoder.encode([Example("the movie")])
    sentinel = tok.convert_tokens_to_ids("<extra_id_0>")
    assert enc.input_ids[enc.predict_positions[0]] == sentinel
    assert enc.input_ids[-1] == tok.eos_token_id


def test_mask_span_gives_several_masks(bert_tokenizer):
    encoder = PromptTokenizer(bert_tokenizer, Template("{text} It was {mask}."), "masked", mask_span=3)
    (enc,) = encoder.encode([Example("fine")])
    assert enc.predict_positions == [4, 5, 6]
    assert all(enc.input_ids[p] == bert_tokenizer.mask_token_id for p in enc.predict_positions)


def test_special_token_names_resolve_per_tokenizer(bert_tokenizer, roberta_tokenizer):
    template = Template('{"meta": "q"} {"special": "<eos>"} {"mask"}')
    (bert,) = PromptTokenizer(bert_tokenizer, template, "masked").encode([Example("", meta={"q": "hi"})])
    assert bert.input_ids[2] == bert_tokenizer.sep_token_id  # BERT has no eos: its separator
    (roberta,) = PromptTokenizer(roberta_tokenizer, template, "masked").encode([Example("", meta={"q": "hi"})])
    assert roberta_tokenizer.eos_token_id in roberta.input_ids[1:-1]
    with pytest.raises(ValueError, match="not in this tokenizer's vocabulary"):
        PromptTokenizer(bert_tokenizer, Template('{"special": "<nope>"} {mask}'), "masked")


def test_batched_encoding_equals_one_at_a_time(bert_tokenizer):
    encoder = PromptTokenizer(bert_tokenizer, Template('{"meta": "premise"} ? {mask} , {text_b}'), "masked")
    examples = [Example("x", f"hypothesis number {i}", meta={"premise": "a b c " * i}) for i in range(7)]
    assert encoder.encode(examples) == [encoder.encode([e])[0] for e in examples]


def test_missing_field_names_the_example(bert_tokenizer):
    encoder = PromptTokenizer(bert_tokenizer, Template("{premise} {mask}"), "masked")
    with pytest.raises(KeyError, match="example 1: the template reads field 'premise'"):
        encoder.encode([Example("a", meta={"premise": "p"}), Example("b")])


# ----------------------------------------------------------------------------- truncation in context


def test_only_shortenable_parts_shrink_and_the_mask_survives(bert_tokenizer):
    tok = bert_tokenizer
    template = Template('{"meta": "premise"} Question: {"meta": "hypothesis", "shortenable": False} ? {"mask"} .')
    examples = [Example("", meta={"premise": "word " * 50, "hypothesis": "keep all of these words"})]
    (full,) = PromptTokenizer(tok, template, "masked").encode(examples)
    (short,) = PromptTokenizer(tok, template, "masked", max_length=20).encode(examples)
    assert len(full.input_ids) > 20
    assert len(short.input_ids) == 20
    assert short.num_truncated == len(full.input_ids) - 20
    text = tok.decode(short.input_ids)
    assert "question : keep all of these words? [MASK]." in text
    assert short.input_ids[short.predict_positions[0]] == tok.mask_token_id
    assert text.split().count("word") == 20 - len(tok("Question: keep all of these words? [MASK] .")["input_ids"])


def test_truncation_strategies_cut_the_documented_end(bert_tokenizer):
    tok = bert_tokenizer
    template = Template("{text} {mask}")
    example = [Example("one two three four five six seven eight")]
    def kept(strategy):
        (enc,) = PromptTokenizer(tok, template, "masked", max_length=6, truncation=strategy).encode(example)
        return tok.decode(enc.input_ids[1:-2])
    assert kept("head") == "one two three"
    assert kept("tail") == "six seven eight"
    assert kept("longest_first") == "one two three"


def test_error_when_fixed_parts_alone_are_too_long(bert_tokenizer):
    template = Template('{"meta": "a", "shortenable": False} {text} {mask}')
    encoder = PromptTokenizer(bert_tokenizer, template, "masked", max_length=8)
    with pytest.raises(ValueError, match="example 0 does not fit max_length=8") as caught:
        encoder.encode([Example("x", meta={"a": "this fixed text is far too long for the budget"})])
    assert "mark more fields shortenable" in str(caught.value)


# ----------------------------------------------------------------------------- soft tokens


def test_soft_token_positions_and_sharing(bert_tokenizer):
    tok = bert_tokenizer
    template = Template('{"soft": "it was"} {text} {"soft_id": 7} {mask} {"soft_id": 7} {"soft": None, "duplicate": 2}')
    encoder = PromptTokenizer(tok, template, "masked")
    assert encoder.soft_init_ids == tok("it was", add_special_tokens=False)["input_ids"] + [None, None, None]
    assert encoder.num_soft_tokens == 5
    (enc,) = encoder.encode([Example("good")])
    # [CLS] s0 s1 good s2 [MASK] s2 s3 s4 [SEP]
    assert enc.soft_positions == [1, 2, 4, 6, 7, 8]
    assert enc.soft_tokens == [0, 1, 2, 2, 3, 4]
    assert enc.predict_positions == [5]


# ----------------------------------------------------------------------------- padding


def test_collate_pads_to_the_batch_longest_on_the_right_for_masked_lms(bert_tokenizer):
    encoder = PromptTokenizer(bert_tokenizer, Template("{soft} {text} {mask}"), "masked")
    encodings = encoder.encode([Example("a"), Example("a b c d e")])
    batch = encoder.collate(encodings)
    longest = max(len(e.input_ids) for e in encodings)
    assert batch["input_ids"].shape == (2, longest)
    assert batch["attention_mask"].tolist()[0] == [1] * len(encodings[0].input_ids) + [0] * (longest - len(encodings[0].input_ids))
    assert batch["input_ids"][0, len(encodings[0].input_ids):].eq(bert_tokenizer.pad_token_id).all()
    assert batch["predict_positions"].tolist() == [e.predict_positions for e in encodings]
    assert batch["soft_index"][:, 1].tolist() == [0, 0]
    assert (batch["soft_index"] >= 0).sum() == 2
    assert "position_ids" not in batch


def test_collate_pads_on_the_left_for_causal_lms(gpt2_tokenizer):
    encoder = PromptTokenizer(gpt2_tokenizer, Template("{soft} {text} it was {mask}"), "causal")
    encodings = encoder.encode([Example("great"), Example("the movie was wonderful and great")])
    batch = encoder.collate(encodings)
    width = batch["input_ids"].size(1)
    assert batch["predict_positions"].tolist() == [[width - 1], [width - 1]]
    short = len(encodings[0].input_ids)
    assert batch["attention_mask"][0].tolist() == [0] * (width - short) + [1] * short
    assert batch["input_ids"][0, width - short:].tolist() == encodings[0].input_ids
    assert batch["position_ids"][0, width - short:].tolist() == list(range(short))
    assert batch["soft_index"][0, width - short].item() == 0
    assert torch.equal(batch["position_ids"][1], torch.arange(width))
