"""PromptForGeneration: teacher forcing, decoding through generate, delta methods, saving."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from deltaprompt.artifacts import ArtifactError
from deltaprompt.data import Example
from deltaprompt.generation import (
    IGNORE,
    PROMPT_FIELD,
    PromptForGeneration,
    generation_example,
    target_of,
)
from deltaprompt.postprocess import PostProcessError
from deltaprompt.prompt_spec import PromptSpec

from .conftest import responsive, tiny_plm

TEMPLATE = "Echo: {text} Answer: {mask}"
PAIRS = [generation_example("the movie was great", "great movie"),
         generation_example("a dull plot", "dull plot")]
PROMPTS = [Example("the movie was great"), Example("a terrible boring film with a dull plot"), Example("news")]


@pytest.fixture
def gpt2(gpt2_tokenizer):
    return responsive(tiny_plm("gpt2", gpt2_tokenizer))


@pytest.fixture(params=["gpt2", "llama"])
def decoder(request, gpt2_tokenizer):
    """GPT-2 (absolute positions) and Llama (rotary positions, grouped-query attention)."""
    return responsive(tiny_plm(request.param, gpt2_tokenizer))


@pytest.fixture
def t5(t5_tokenizer):
    return tiny_plm("t5", t5_tokenizer)


def new_tokens(gen: PromptForGeneration, examples, **options) -> list[list[int]]:
    features = gen.model.encode(examples)
    return gen.model.generate_ids(features, gen.generation_config(**options), batch_size=8)


def greedy_loop(step, start: list[int], steps: int, eos: int) -> list[int]:
    """Greedy decoding by hand: ``step(sequence)`` gives the next-token logits; full recompute."""
    sequence, new = list(start), []
    for _ in range(steps):
        token = int(step(sequence).argmax())
        new.append(token)
        sequence.append(token)
        if token == eos:
            break
    return new


def soft_embeddings(gen: PromptForGeneration, feature) -> torch.Tensor:
    """A prompt's input vectors by hand: token embeddings, the soft table's rows at soft slots."""
    model = gen.model
    embeds = model.model.get_input_embeddings()(torch.tensor(feature.prompt.input_ids)).clone()
    table = model.soft_prompt()
    for position, token in zip(feature.prompt.soft_positions, feature.prompt.soft_tokens, strict=True):
        embeds[position] = table[token]
    return embeds


# ----------------------------------------------------------------------------- data and teacher forcing

def test_target_is_read_from_meta_then_label():
    assert target_of(generation_example("x", "y")) == "y"
    assert target_of(Example("x", meta={"output": "z"})) == "z"
    assert target_of(Example("x", label="positive")) == "positive"
    assert target_of(Example("x", meta={"target": {"a": 1}})) == '{"a": 1}'
    assert target_of(Example("x")) is None


def test_teacher_forcing_labels_mask_the_prompt_exactly(gpt2, gpt2_tokenizer):
    gen = PromptForGeneration(gpt2, TEMPLATE, max_new_tokens=8)
    features = gen.model.encode(PAIRS)
    batch = gen.model.collate(features)
    labels = gen.model.sequence_labels(features)
    eos = gpt2_tokenizer.eos_token_id
    width = batch["input_ids"].size(1)
    for row, (feature, example) in enumerate(zip(features, PAIRS, strict=True)):
        prompt = gpt2_tokenizer("Echo: " + example.text + " Answer:", add_special_tokens=False)["input_ids"]
        target = gpt2_tokenizer(" " + example.meta["target"], add_special_tokens=False)["input_ids"] + [eos]
        assert feature.prompt.input_ids == prompt
        assert feature.target_ids == target
        start = width - len(prompt) - len(target)  # left padding, then the prompt, then the answer
        assert labels[row, : width - len(target)].eq(IGNORE).all()  # padding and every prompt token
        assert labels[row, width - len(target):].tolist() == target
        assert batch["input_ids"][row, start:].tolist() == prompt + target
        assert batch["attention_mask"][row].tolist() == [0] * start + [1] * (width - start)
        # The output at each target position predicts the next column's token: the label's.
        positions = batch["target_positions"][row, : len(target)]
        assert (positions + 1).tolist() == list(range(width - len(target), width))


def test_causal_loss_equals_transformers_labels_loss(decoder):
    gen = PromptForGeneration(decoder, TEMPLATE)
    features = gen.model.encode(PAIRS)
    batch = gen.model.collate(features)
    ours = gen.model.loss(gen.model(batch), gen.model.collate_targets([f.target_ids for f in features]))
    theirs = decoder.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           position_ids=batch["position_ids"], labels=gen.model.sequence_labels(features)).loss
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_seq2seq_loss_equals_transformers_labels_loss(t5, t5_tokenizer):
    gen = PromptForGeneration(t5, "Echo: {text} {mask}")
    features = gen.model.encode(PAIRS)
    assert features[0].prompt.input_ids == t5_tokenizer("Echo: the movie was great")["input_ids"]  # no sentinel
    assert features[0].target_ids == t5_tokenizer("great movie")["input_ids"]  # answer + </s>
    batch = gen.model.collate(features)
    labels = gen.model.collate_targets([f.target_ids for f in features])
    ours = gen.model.loss(gen.model(batch), labels)
    theirs = t5.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    assert torch.allclose(ours, theirs, atol=1e-5)


# ----------------------------------------------------------------------------- training

def test_fine_tuning_memorises_pairs_and_evaluates_them(gpt2):
    gen = PromptForGeneration(gpt2, TEMPLATE, max_new_tokens=6)
    features = gen.model.encode(PAIRS)
    before = gen.model.dev_metrics(features, [f.target_ids for f in features], 8)
    assert gen.generate(PAIRS) != ["great movie", "dull plot"]
    gen.fit(PAIRS, epochs=40, batch_size=2, lr=1e-2, warmup_ratio=0.0, progress=False)
    after = gen.model.dev_metrics(features, [f.target_ids for f in features], 8)
    assert after["loss"] < before["loss"] / 10 and after["accuracy"] == 1.0
    assert gen.generate(PAIRS) == ["great movie", "dull plot"]
    scores = gen.evaluate(PAIRS)
    assert scores["exact_match"] == 1.0 and scores["token_f1"] == 1.0 and scores["n"] == 2


def test_seq2seq_trains_and_generates(t5):
    gen = PromptForGeneration(t5, "Echo: {text} {mask}", max_new_tokens=6)
    assert gen.generate(PAIRS) != ["great movie", "dull plot"]
    gen.fit(PAIRS, epochs=30, batch_size=2, lr=1e-2, warmup_ratio=0.0, progress=False)
    assert gen.result.train_loss < 1.0
    assert gen.generate(PAIRS) == ["great movie", "dull plot"]


def test_lora_generation_changes_only_after_training(gpt2):
    base = PromptForGeneration(gpt2, TEMPLATE, max_new_tokens=6).generate(PAIRS)
    gen = PromptForGeneration(gpt2, TEMPLATE, methods=[{"method": "lora", "lr": 3e-2}], max_new_tokens=6)
    assert gen.generate(PAIRS) == base  # LoRA starts as the identity
    gen.fit(PAIRS, epochs=30, batch_size=2, warmup_ratio=0.0, progress=False)
    assert gen.generate(PAIRS) != base


def test_training_refuses_examples_without_outputs(gpt2):
    gen = PromptForGeneration(gpt2, TEMPLATE, methods=["lora"])
    with pytest.raises(ValueError, match=r"training example 1 has no output.*meta\['target'\]"):
        gen.fit([PAIRS[0], Example("no answer")], epochs=1, progress=False)


# ----------------------------------------------------------------------------- decoding

def test_greedy_generate_equals_an_argmax_loop(decoder, gpt2_tokenizer):
    gen = PromptForGeneration(decoder, TEMPLATE, max_new_tokens=8)
    eos = gpt2_tokenizer.eos_token_id
    got = new_tokens(gen, PROMPTS)  # one left-padded batch of three lengths
    with torch.no_grad():
        for feature, row in zip(gen.model.encode(PROMPTS), got, strict=True):
            manual = greedy_loop(lambda s: decoder.model(input_ids=torch.tensor([s])).logits[0, -1],
                                 feature.prompt.input_ids, 8, eos)
            assert row == manual
    texts = gen.generate(PROMPTS)
    assert texts == [gpt2_tokenizer.decode(r, skip_special_tokens=True).removeprefix(" ") for r in got]


def test_prompt_tuning_generates_from_its_soft_tokens(gpt2, gpt2_tokenizer):
    template = 'Echo: {text} {"soft": None, "duplicate": 2} Answer: {mask}'  # soft tokens mid-prompt too
    gen = PromptForGeneration(gpt2, template, methods=[{"method": "prompt_tuning", "num_tokens": 3}],
                              max_new_tokens=8)
    with torch.no_grad():
        gen.model.soft_prompt.weight.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(1))
    eos = gpt2_tokenizer.eos_token_id
    got = new_tokens(gen, PROMPTS)
    features = gen.model.encode(PROMPTS)
    assert all(len(f.prompt.soft_positions) == 5 for f in features)
    embed = gpt2.model.get_input_embeddings()
    with torch.no_grad():
        for feature, row in zip(features, got, strict=True):
            vectors = soft_embeddings(gen, feature)
            prompt_length = len(feature.prompt.input_ids)

            def step(sequence, vectors=vectors, n=prompt_length):
                extra = embed(torch.tensor(sequence[n:], dtype=torch.long))
                return gpt2.model(inputs_embeds=torch.cat([vectors, extra])[None]).logits[0, -1]

            assert row == greedy_loop(step, feature.prompt.input_ids, 8, eos)
        # The placeholder ids in the soft slots are not what the model reads.
        plain = [greedy_loop(lambda s: gpt2.model(input_ids=torch.tensor([s])).logits[0, -1],
                             f.prompt.input_ids, 8, eos) for f in features]
    assert plain != got


def test_prefix_generation_equals_generation_after_its_text(decoder, gpt2_tokenizer):
    """A prefix initialised from text holds exactly the keys and values the model computes for
    that text, so greedy and beam search with it equal transformers' own decoding of the text
    followed by the prompt: the prefix reaches every step, beams reorder it with the cache."""
    text_ids = gpt2_tokenizer("the movie was", add_special_tokens=False)["input_ids"]
    prefix = {"method": "prefix", "num_virtual_tokens": len(text_ids), "init": "text", "init_text": "the movie was"}
    gen = PromptForGeneration(decoder, TEMPLATE, methods=[prefix], max_new_tokens=6)
    model = gen.model
    eos = gpt2_tokenizer.eos_token_id
    # Three lengths (left padding), and one prompt alone (no padding: generate drops the mask).
    for examples, options in ((PROMPTS, {}), (PROMPTS, {"num_beams": 3}), (PROMPTS[:1], {})):
        features = model.encode(examples)
        joined = model.prompt_tokenizer.collate([
            type(f.prompt)(text_ids + f.prompt.input_ids, [], [], []) for f in features
        ])
        config = gen.generation_config(**options)
        with torch.no_grad():
            reference = decoder.model.generate(input_ids=joined["input_ids"],
                                               attention_mask=joined["attention_mask"], generation_config=config)
        width = joined["input_ids"].size(1)
        expected = []
        for row in reference[:, width:].tolist():
            expected.append(row[: row.index(eos) + 1] if eos in row else row)
        assert model.generate_ids(features, config) == expected, options
    # Without the prefix the model continues differently: the test is not vacuous.
    plain = PromptForGeneration(decoder, TEMPLATE, max_new_tokens=6)
    assert new_tokens(plain, PROMPTS) != new_tokens(gen, PROMPTS)


def test_seq2seq_soft_tokens_and_prefix_reach_every_step(t5, t5_tokenizer):
    methods = [{"method": "prefix", "num_virtual_tokens": 4}, {"method": "prompt_tuning", "num_tokens": 2}]
    gen = PromptForGeneration(t5, "Echo: {text} {mask}", methods=methods, max_new_tokens=6)
    with torch.no_grad():
        gen.model.soft_prompt.weight.normal_(0.0, 5.0, generator=torch.Generator().manual_seed(2))
    got = new_tokens(gen, PROMPTS)
    model = t5.model
    start, eos = model.config.decoder_start_token_id, t5_tokenizer.eos_token_id
    with torch.no_grad():
        for feature, row in zip(gen.model.encode(PROMPTS), got, strict=True):
            vectors = soft_embeddings(gen, feature)[None]
            mask = torch.ones(vectors.shape[:2], dtype=torch.long)
            encoded = model.get_encoder()(inputs_embeds=vectors, attention_mask=mask)  # encoder prefix hooks

            def step(sequence, encoded=encoded, mask=mask):
                return model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=torch.tensor([sequence]),
                             use_cache=False).logits[0, -1]

            assert row == greedy_loop(step, [start], 6, eos)


def test_decoding_options_reach_generate(gpt2, gpt2_tokenizer):
    gen = PromptForGeneration(gpt2, TEMPLATE, max_new_tokens=10)
    greedy = new_tokens(gen, PROMPTS)
    assert any(len(set(row)) < len(row) for row in greedy)  # this model repeats itself
    distinct = new_tokens(gen, PROMPTS, no_repeat_ngram_size=1)
    assert all(len(set(row)) == len(row) for row in distinct)

    options = {"num_beams": 3, "repetition_penalty": 1.5}
    batch = gen.model.prompt_tokenizer.collate([f.prompt for f in gen.model.encode(PROMPTS)])
    with torch.no_grad():
        reference = gpt2.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                        max_new_tokens=10, pad_token_id=gpt2_tokenizer.eos_token_id, **options)
    decoded = gpt2_tokenizer.batch_decode(reference[:, batch["input_ids"].size(1):], skip_special_tokens=True)
    assert gen.generate(PROMPTS, **options) == [t.removeprefix(" ") for t in decoded]

    sampled = gen.generate(PROMPTS, do_sample=True, temperature=5.0, seed=1)
    assert gen.generate(PROMPTS, do_sample=True, temperature=5.0, seed=1) == sampled  # seeded
    assert gen.generate(PROMPTS, do_sample=True, temperature=5.0, seed=2) != sampled
    assert sampled != gen.generate(PROMPTS)


def test_max_new_tokens_bounds_the_answer(gpt2):
    gen = PromptForGeneration(gpt2, TEMPLATE, max_new_tokens=10)
    assert all(len(row) <= 3 for row in new_tokens(gen, PROMPTS, max_new_tokens=3))
    assert max(len(row) for row in new_tokens(gen, PROMPTS)) > 3


# ----------------------------------------------------------------------------- post-processing and retries

class Recorder:
    """Wraps ``generate_ids`` to keep every call's prompts (token ids) and new tokens."""

    def __init__(self, gen: PromptForGeneration):
        self.gen, self.calls = gen, []
        self.inner = gen.model.generate_ids
        gen.model.generate_ids = self

    def __call__(self, features, *args, **kwargs):
        out = self.inner(features, *args, **kwargs)
        self.calls.append(([f.prompt.input_ids for f in features], out))
        return out

    def prompts(self, call: int) -> list[str]:
        return [self.gen.model.plm.tokenizer.decode(ids) for ids in self.calls[call][0]]


def test_postprocess_errors_take_the_value_place_and_retry_once(gpt2):
    gen = PromptForGeneration(gpt2, "Q: {text}\nA: {mask}", max_new_tokens=5)
    recorder = Recorder(gen)
    first = gen.generate(PROMPTS[:2])
    values = gen.generate(PROMPTS[:2], postprocess=["strip", "json"])
    assert all(isinstance(v, PostProcessError) and v.step == "json" for v in values)
    assert len(recorder.calls) == 2  # no retry unless asked

    seen: list[str] = []

    def accept_second(text: str) -> str:  # rejects the first output of each example, accepts the retry
        seen.append(text)
        if text in first:
            raise PostProcessError("json", "no_json", text)
        return text.upper()

    values = gen.generate(PROMPTS[:2], postprocess=accept_second, retry_invalid=True)
    retry_prompts = recorder.prompts(-1)
    assert len(recorder.calls) == 4 and len(retry_prompts) == 2
    hint = PostProcessError("json", "no_json", "").retry_hint()
    for example, output, prompt in zip(PROMPTS[:2], first, retry_prompts, strict=True):
        assert prompt == f"Q: {example.text}\nA: {output}\n{hint}\nA:"  # output, hint, the cue again
    assert values == [t.upper() for t in seen[2:]]


def test_retry_in_a_chat_is_a_new_user_turn(gpt2, gpt2_tokenizer):
    tokenizer = copy.deepcopy(gpt2_tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    plm = copy.copy(gpt2)
    plm.tokenizer = tokenizer
    gen = PromptForGeneration(plm, "Echo: {text} {mask}", chat=True, max_new_tokens=4)
    features = gen.model.encode(PROMPTS[:1])
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Echo: the movie was great"}],
                                         tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(features[0].prompt.input_ids) == chat
    recorder = Recorder(gen)
    [output] = gen.generate(PROMPTS[:1])

    def reject(text: str) -> str:
        raise PostProcessError("strip", "empty", text)

    [value] = gen.generate(PROMPTS[:1], postprocess=reject, retry_invalid=True)
    assert isinstance(value, PostProcessError)  # still rejected: the error of the second try is kept
    conversation = [{"role": "user", "content": "Echo: the movie was great"}, {"role": "assistant", "content": output},
                    {"role": "user", "content": value.retry_hint()}]
    assert recorder.prompts(-1) == [tokenizer.apply_chat_template(conversation, tokenize=False,
                                                                add_generation_prompt=True)]


def test_evaluate_scores_post_processed_values(gpt2, monkeypatch):
    gen = PromptForGeneration(gpt2, TEMPLATE)
    examples = [generation_example("a", '{"b": 1, "a": 2}'), generation_example("b", '{"a": 1}'),
                generation_example("c", "[1, 2]")]
    rejected = PostProcessError("json", "no_json", "nothing")
    monkeypatch.setattr(gen, "generate", lambda examples, **options: [{"a": 2, "b": 1}, rejected, [1, 2]])
    scores = gen.evaluate(examples, postprocess=["json"])
    # Key order and spacing do not count; a JSON list is one answer, not several references.
    assert scores["exact_match"] == pytest.approx(2 / 3) and scores["invalid"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="evaluation needs outputs"):
        gen.evaluate([Example("no output")])
    # A record half right earns partial token F1: keys and values are words, not one JSON token.
    monkeypatch.setattr(gen, "generate", lambda examples, **options: [{"persons": ["Ada"], "places": ["Rome"]}])
    partial = gen.evaluate([generation_example("x", '{"persons": ["Ada"], "places": ["Paris"]}')],
                           postprocess=["json"])
    assert partial["exact_match"] == 0 and partial["token_f1"] == pytest.approx(0.75)


# ----------------------------------------------------------------------------- templates and specs

def test_answer_slot_rules(gpt2, roberta_tokenizer):
    gen = PromptForGeneration(gpt2, "Echo: {text}")  # no mask: the answer follows the end directly
    [feature] = gen.model.encode([PAIRS[0]])
    assert feature.answer_prefix == ""
    with pytest.raises(ValueError, match="one answer slot"):
        PromptForGeneration(gpt2, "{text} {mask} and {mask}")
    with pytest.raises(ValueError, match="move .*text_b.* before the mask"):
        PromptForGeneration(gpt2, "{text} {mask} {text_b}")
    with pytest.warns(UserWarning, match="text after it is dropped"):
        dropped = PromptForGeneration(gpt2, "Echo: {text} It was {mask}.")
    assert dropped.model.encode([PAIRS[0]])[0].prompt.input_ids == gen.model.plm.tokenizer(
        "Echo: the movie was great It was", add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="masked LM cannot generate"):
        PromptForGeneration(tiny_plm("roberta", roberta_tokenizer), TEMPLATE)


def test_prompt_spec_is_a_template(gpt2, gpt2_tokenizer):
    spec = PromptSpec(task="Repeat the review.", input="Review: {text}")
    gen = PromptForGeneration(gpt2, spec)
    [feature] = gen.model.encode([PAIRS[0]])
    assert gpt2_tokenizer.decode(feature.prompt.input_ids) == spec.render(PAIRS[0])
    assert feature.target_ids[:-1] == gpt2_tokenizer(" great movie", add_special_tokens=False)["input_ids"]


def test_self_check_spec_answers_its_verification_prompt(t5):
    spec = PromptSpec(task="Repeat the review.", input="Review: {text}", chain_of_thought=True, self_check=True)
    gen = PromptForGeneration(t5, spec, max_new_tokens=4)
    recorder = Recorder(gen)
    [answer] = gen.generate(PROMPTS[:1])
    (draft_prompt, draft_ids), (check_prompt, answer_ids) = recorder.calls
    [draft] = gen._decode(gen.model.encode(PROMPTS[:1]), draft_ids)

    def ids(text: str) -> list[int]:
        return gen.model.encode([Example("", meta={PROMPT_FIELD: text})])[0].prompt.input_ids

    assert draft_prompt == [ids(spec.render(PROMPTS[0]))]
    assert check_prompt == [ids(spec.self_check_text(PROMPTS[0], draft))]
    assert answer == t5.tokenizer.decode(answer_ids[0], skip_special_tokens=True)
    assert PROMPT_FIELD not in PROMPTS[0].meta


# ----------------------------------------------------------------------------- saving

SAVED = {
    "gpt2": ["lora", {"method": "prefix", "num_virtual_tokens": 3}, {"method": "prompt_tuning", "num_tokens": 2}],
    "llama": [{"method": "p_tuning", "num_tokens": 3}, "adapter", "bitfit"],
    "t5": [{"method": "prefix", "num_virtual_tokens": 3}, "lora"],
}


@pytest.mark.parametrize("kind", list(SAVED))
def test_save_and_load_give_identical_generations(kind, request, tmp_path):
    tokenizer = request.getfixturevalue("t5_tokenizer" if kind == "t5" else "gpt2_tokenizer")
    template = "Echo: {text} {mask}"

    def fresh():
        return responsive(tiny_plm(kind, tokenizer))

    gen = PromptForGeneration(fresh(), template, methods=SAVED[kind], max_new_tokens=6)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # stand-in for training: every trained tensor moves
        for parameter in gen.model.trainable_parameters().values():
            parameter.add_(torch.randn(parameter.shape, generator=generator))
    expected = gen.generate(PROMPTS)
    gen.save(tmp_path / "gen")  # folds P-Tuning's encoder: the same generations from a plain table
    assert gen.generate(PROMPTS) == expected
    assert set(load_file(str(tmp_path / "gen" / "weights.safetensors"))) == set(gen.model.trainable_parameters())

    base = fresh()
    untrained = PromptForGeneration(base, template, max_new_tokens=6).generate(PROMPTS)
    loaded = PromptForGeneration.load(tmp_path / "gen", plm=base)
    assert loaded.generate(PROMPTS) == expected != untrained
    assert loaded.model.prompt_tokenizer.max_length == gen.model.prompt_tokenizer.max_length

    other = fresh()
    with torch.no_grad():
        next(other.model.parameters()).add_(1.0)
    with pytest.raises(ArtifactError, match="weights differ"):
        PromptForGeneration.load(tmp_path / "gen", plm=other)
