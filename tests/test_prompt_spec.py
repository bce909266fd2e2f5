"""PromptSpec: rendering order, chat templates, classification templates, YAML."""

import copy
import json

import numpy as np
import pytest

from deltaprompt import Example, PromptClassifier, Template
from deltaprompt.prompt_spec import Constraints, Exemplar, OutputFormat, PromptSpec, Turn
from deltaprompt.schema import ConfigError

from .conftest import tiny_plm

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SCHEMA = {"type": "object", "properties": {"label": {"enum": ["negative", "positive"]}}, "required": ["label"]}
EXAMPLE = Example("the plot was great")


def full_spec(**overrides) -> PromptSpec:
    """A spec with every component set."""
    values = dict(
        name="full",
        persona="You are a careful film critic.",
        task="Classify the sentiment of the review.",
        output_format=OutputFormat("labels", labels=["negative", "positive"], description="One word."),
        constraints=Constraints(max_words=3, avoid=["maybe", "perhaps"], rules=["Never explain."]),
        tone="dry",
        context="Reviews come from an old forum.",
        exemplars=[Exemplar("a gripping, funny film", "positive"), Exemplar({"text": "dull and slow"}, "negative")],
        history=[Turn("user", "Ready?"), Turn("assistant", "Yes.")],
        input="Review: {text}",
    )
    values.update(overrides)
    return PromptSpec(**values)


FULL_TEXT = """You are a careful film critic.

Classify the sentiment of the review.

Answer with one of: negative, positive.
One word.

Use at most 3 words.
Do not use: maybe, perhaps.
Never explain.

Tone: dry

Context:
Reviews come from an old forum.

Review: a gripping, funny film
Answer: positive

Review: dull and slow
Answer: negative

User: Ready?
Assistant: Yes.

Review: the plot was great
Answer:"""


@pytest.fixture(scope="module")
def chat_tokenizer(gpt2_tokenizer):
    tokenizer = copy.deepcopy(gpt2_tokenizer)  # the session's tokenizer stays without a template
    tokenizer.chat_template = CHATML
    return tokenizer


# ----------------------------------------------------------------------------- plain text

def test_render_puts_every_component_in_the_documented_order():
    text = full_spec().render(EXAMPLE)
    assert text == FULL_TEXT
    markers = ["careful film critic", "Classify the sentiment", "Answer with one of", "Use at most 3",
               "Tone: dry", "Context:", "a gripping", "dull and slow", "User: Ready?", "the plot was great"]
    positions = [text.index(m) for m in markers]
    assert positions == sorted(positions)
    assert text.endswith("\nAnswer:")


def test_render_is_deterministic_whatever_the_dict_order():
    spec = full_spec(output_format=OutputFormat("json", schema=SCHEMA))
    reordered = full_spec(output_format=OutputFormat("json", schema=dict(reversed(list(SCHEMA.items())))))
    assert spec.render(EXAMPLE) == spec.render(EXAMPLE) == reordered.render(EXAMPLE)
    # an Example, a dict of fields and a plain string read the same
    assert spec.render(EXAMPLE) == spec.render({"text": EXAMPLE.text}) == spec.render(EXAMPLE.text)


def test_empty_components_are_left_out():
    assert PromptSpec().render(EXAMPLE) == "the plot was great\nAnswer:"
    assert PromptSpec(task="Classify it.").render(EXAMPLE) == "Classify it.\n\nthe plot was great\nAnswer:"
    assert PromptSpec(answer_prefix="").render(EXAMPLE) == "the plot was great"
    text = PromptSpec(tone="warm", exemplars=[Exemplar("ok", "positive")]).render(EXAMPLE)
    assert text == "Tone: warm\n\nok\nAnswer: positive\n\nthe plot was great\nAnswer:"
    assert "\n\n\n" not in full_spec(context=None, history=[]).render(EXAMPLE)


def test_exemplars_render_as_input_answer_cue_output():
    spec = PromptSpec(
        input="Premise: {text}\nHypothesis: {text_b}",
        exemplars=[Exemplar({"text": "a dog runs", "text_b": "an animal moves"}, "yes")],
        answer_prefix="Entailment:",
    )
    text = spec.render(Example("it rains", text_b="it is dry"))
    assert text == (
        "Premise: a dog runs\nHypothesis: an animal moves\nEntailment: yes\n\n"
        "Premise: it rains\nHypothesis: it is dry\nEntailment:"
    )


def test_output_formats_and_constraints_are_worded_as_documented():
    labels = PromptSpec(output_format=OutputFormat("labels", labels=["negative", "positive"]))
    assert labels.render(EXAMPLE).startswith("Answer with one of: negative, positive.\n\n")
    json_text = PromptSpec(output_format=OutputFormat("json", schema=SCHEMA)).render(EXAMPLE)
    assert json.dumps(SCHEMA, sort_keys=True) in json_text
    assert "only a JSON object" in json_text
    assert "only a JSON object" in PromptSpec(output_format=OutputFormat("json")).render(EXAMPLE)
    constraints = PromptSpec(constraints=Constraints(max_words=7, avoid=["a", "b"], rules=["Be brief.", "No lists."]))
    assert constraints.render(EXAMPLE).startswith(
        "Use at most 7 words.\nDo not use: a, b.\nBe brief.\nNo lists.\n\n"
    )
    assert PromptSpec(constraints=Constraints(max_words=1)).render(EXAMPLE).startswith("Use at most 1 word.\n")


def test_chain_of_thought_asks_for_reasoning_then_the_answer_line():
    spec = full_spec(chain_of_thought=True)
    text = spec.render(EXAMPLE)
    assert text.startswith(FULL_TEXT[: -len("\nAnswer:")])
    assert text.endswith(
        '\n\nThink step by step, then give the final answer on a last line of the form "Answer: <answer>".'
    )
    # in chat, exemplar answers show the same final line the model is asked for
    assert spec.messages(EXAMPLE)[2] == {"role": "assistant", "content": "Answer: positive"}
    assert spec.messages(EXAMPLE)[-1]["content"].endswith('"Answer: <answer>".')


# ----------------------------------------------------------------------------- chat

def test_messages_hold_system_exemplars_history_and_final_user_turn():
    messages = full_spec().messages(EXAMPLE)
    roles = ["system", "user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert [m["role"] for m in messages] == roles
    assert messages[0]["content"] == (
        "You are a careful film critic.\n\nClassify the sentiment of the review.\n\n"
        "Answer with one of: negative, positive.\nOne word.\n\nUse at most 3 words.\n"
        "Do not use: maybe, perhaps.\nNever explain.\n\nTone: dry"
    )
    assert messages[1:5] == [
        {"role": "user", "content": "Review: a gripping, funny film"},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "Review: dull and slow"},
        {"role": "assistant", "content": "negative"},
    ]
    assert messages[5:7] == [{"role": "user", "content": "Ready?"}, {"role": "assistant", "content": "Yes."}]
    final = "Context:\nReviews come from an old forum.\n\nReview: the plot was great"
    assert messages[7] == {"role": "user", "content": final}
    # nothing for a system message: none, so the chat template adds its own default
    assert PromptSpec(context="Background.").messages(EXAMPLE) == [
        {"role": "user", "content": "Context:\nBackground.\n\nthe plot was great"}
    ]


def test_render_chat_equals_the_tokenizers_own_chat_template(chat_tokenizer):
    spec = full_spec(output_format=OutputFormat("json", schema=SCHEMA))
    text = spec.render_chat(chat_tokenizer, EXAMPLE)
    own = chat_tokenizer.apply_chat_template(spec.messages(EXAMPLE), tokenize=False, add_generation_prompt=True)
    assert text == own
    assert text.startswith("<|im_start|>system\nYou are a careful film critic.\n\n")
    assert text.endswith("Review: the plot was great<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|im_start|>") == 9  # system, 2 exemplars x 2, 2 history turns, the query, the answer
    assert PromptSpec().render_chat(chat_tokenizer, EXAMPLE).startswith("<|im_start|>user\nthe plot was great")


def test_render_chat_without_a_chat_template_says_how_to_set_one(gpt2_tokenizer):
    with pytest.raises(ValueError, match=r"has no chat template; set one, e\.g\. tokenizer\.chat_template"):
        PromptSpec().render_chat(gpt2_tokenizer, EXAMPLE)
    with pytest.raises(ValueError, match="no chat template"):
        PromptSpec().template(gpt2_tokenizer, chat=True)


def test_self_check_messages_add_the_draft_and_a_verification_turn():
    spec = full_spec(self_check=True)
    messages = spec.self_check_messages(EXAMPLE, " positive \n")
    assert messages[:-2] == spec.messages(EXAMPLE)
    assert messages[-2] == {"role": "assistant", "content": "positive"}
    assert messages[-1]["role"] == "user"
    assert "against the instructions" in messages[-1]["content"]
    assert messages[-1]["content"].endswith('corrected final answer only, as "Answer: <answer>".')
    text = spec.self_check_text(EXAMPLE, "positive")
    assert text.startswith(spec.render(EXAMPLE) + " positive\n\nCheck your answer")
    assert text.endswith("\nAnswer:")


# ----------------------------------------------------------------------------- templates

TEMPLATE_SPECS = {
    "full": full_spec(),
    "bare": PromptSpec(),
    "no cue": PromptSpec(task="Say it.", answer_prefix=""),
    "braces": full_spec(
        task="Fill {name} and {\"mask\"} literally; }{ too.",
        output_format=OutputFormat("json", schema=SCHEMA),
        exemplars=[Exemplar("a {text} film", "{\"label\": \"positive\"}")],
    ),
    "spaces": PromptSpec(
        context="  indented line\nline with a trailing space \n\n   ",
        exemplars=[Exemplar(" padded  ", " yes")],
        input='  Review:  {text} {"text": "  (end)  "}',
    ),
    "soft": PromptSpec(
        task="Classify.",
        exemplars=[Exemplar("good", "positive"), Exemplar("bad", "negative")],
        input='{"soft": "Review:"} {text} {"soft": None, "duplicate": 3} {"special": "<eos>"}',
    ),
    "fields": PromptSpec(
        input='{"meta": "premise", "post_processing": "rstrip_punct", "shortenable": False}? {text_b}',
        exemplars=[Exemplar({"premise": "It rains.", "text_b": "wet"}, "yes")],
        answer_prefix="So:",
    ),
}
TEMPLATE_EXAMPLE = Example("the {plot} was great ", text_b="it is", meta={"premise": "A dog runs!"})


@pytest.mark.parametrize("name", list(TEMPLATE_SPECS))
def test_template_renders_as_the_plain_prompt_with_the_mask(name):
    spec = TEMPLATE_SPECS[name]
    template = Template(spec.template().text)  # through its text: braces and spaces survive parsing
    assert template.num_masks == 1
    assert template.mask_part.prefix == " "  # the label word carries its space: " positive"
    assert template.render(TEMPLATE_EXAMPLE) == spec.render(TEMPLATE_EXAMPLE) + " [MASK]"
    assert set(template.fields) == set(spec.input_template.fields)


def test_braces_in_instructions_and_schemas_stay_text():
    spec = TEMPLATE_SPECS["braces"]
    template = spec.template()
    assert template.fields == ("text",)  # {name} in the task is not a field
    literal = "".join(p.value or "" for p in template.parts if p.kind == "text")
    assert 'Fill {name} and {"mask"} literally; }{ too.' in literal
    assert json.dumps(SCHEMA, sort_keys=True) in literal


def test_soft_tokens_of_the_input_are_shared_with_the_exemplars():
    template = TEMPLATE_SPECS["soft"].template()
    soft = [p for p in template.parts if p.kind == "soft"]
    assert len(soft) == 6  # two soft blocks in each of two exemplars and the query
    assert len(template.soft_groups) == 2  # but only the input's two groups of vectors
    assert [g.init_text for g in template.soft_groups] == ["Review:", None]
    assert template.soft_groups[1].length == 3
    assert [p.kind for p in template.parts].count("special") == 3


def test_chat_template_puts_the_mask_right_after_the_generation_prompt(chat_tokenizer):
    spec = full_spec(task="Return {json} when asked.")
    template = Template(spec.template(chat_tokenizer, chat=True).text)
    assert template.text.endswith("<|im_start|>assistant\n{mask}")
    assert template.mask_part.prefix == ""  # an assistant turn starts without a space
    assert template.fields == ("text",)
    for example in (EXAMPLE, TEMPLATE_EXAMPLE):
        assert template.render(example) == spec.render_chat(chat_tokenizer, example) + "[MASK]"


def test_chat_template_keeps_soft_tokens_and_field_options(chat_tokenizer):
    for name in ("soft", "fields", "spaces"):
        spec = TEMPLATE_SPECS[name]
        template = spec.template(chat_tokenizer, chat=True)
        assert template.render(TEMPLATE_EXAMPLE) == spec.render_chat(chat_tokenizer, TEMPLATE_EXAMPLE) + "[MASK]"
        assert template.fields == spec.input_template.fields
        assert len(template.soft_groups) == len(spec.input_template.soft_groups)


def test_chat_template_does_not_repeat_a_bos_the_tokenizer_adds(chat_tokenizer):
    tokenizer = copy.deepcopy(chat_tokenizer)
    tokenizer.add_bos_token = True
    tokenizer.chat_template = "{{ bos_token }}" + CHATML
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    spec = PromptSpec(task="Classify.")
    assert spec.render_chat(tokenizer, EXAMPLE).startswith("<s><|im_start|>system")
    template = spec.template(tokenizer, chat=True)
    assert template.text.startswith("<|im_start|>system")
    assert template.render(EXAMPLE) == spec.render_chat(tokenizer, EXAMPLE)[len("<s>"):] + "[MASK]"


def test_template_refuses_chain_of_thought_and_self_check(chat_tokenizer):
    cot = r"chain_of_thought needs generated text.*PromptForGeneration.*chain_of_thought: false"
    with pytest.raises(ValueError, match=cot):
        PromptSpec(chain_of_thought=True).template()
    with pytest.raises(ValueError, match=r"self_check needs generated text.*self_check: false"):
        PromptSpec(self_check=True).template(chat_tokenizer, chat=True)


def test_prompt_classifier_scores_classes_through_a_spec_template(gpt2_tokenizer, chat_tokenizer):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    spec = PromptSpec(task="Classify the sentiment.", input="Review: {text}",
                      exemplars=[Exemplar("a wonderful film", "positive")])
    words = "negative: terrible; positive: great"
    texts = ["the movie was great", "a dull plot"]
    from_spec = PromptClassifier(plm, spec.template(), words)
    by_hand = PromptClassifier(
        plm,
        "Classify the sentiment.\n\nReview: a wonderful film\nAnswer: positive\n\nReview: {text}\nAnswer: {mask}",
        words,
    )
    probabilities = from_spec.predict_proba(texts)
    assert probabilities.shape == (2, 2)
    np.testing.assert_allclose(probabilities, by_hand.predict_proba(texts), atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-6)
    # the model reads exactly the rendered prompt, and predicts the label word after it
    encoding = from_spec.model.encode([Example(texts[0])])[0]
    assert gpt2_tokenizer.decode(encoding.input_ids) == spec.render(texts[0])
    chat_spec = PromptSpec(input="Review: {text}")  # short: ChatML markup is many tokens in this tiny vocabulary
    chat = PromptClassifier(tiny_plm("gpt2", chat_tokenizer), chat_spec.template(chat_tokenizer, chat=True), words)
    encoding = chat.model.encode([Example(texts[0])])[0]
    assert chat_tokenizer.decode(encoding.input_ids) == chat_spec.render_chat(chat_tokenizer, texts[0])
    assert chat.predict_proba(texts).shape == (2, 2)


# ----------------------------------------------------------------------------- YAML

def test_yaml_round_trip_is_exact_and_small(tmp_path):
    spec = full_spec(
        task="Classify the sentiment.\nThink of sarcasm.",
        output_format=OutputFormat("json", schema=SCHEMA),
        exemplars=[Exemplar("great", "positive"), Exemplar({"text": "bad", "text_b": "x"}, "negative")],
        chain_of_thought=True,
        answer_prefix="Final:",
    )
    text = spec.to_yaml()
    assert PromptSpec.from_yaml(text) == spec
    assert "task: |-\n  Classify the sentiment.\n  Think of sarcasm.\n" in text  # a block, not an escaped line
    keys = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith((" ", "-"))]
    assert keys == ["name", "persona", "task", "output_format", "constraints", "tone", "context",
                    "exemplars", "history", "input", "chain_of_thought", "answer_prefix"]
    assert "- input: great\n  output: positive\n" in text  # a text-only input is a plain string
    path = spec.save(tmp_path / "specs" / "a.yaml")
    assert PromptSpec.load(path) == spec
    assert spec.to_yaml() == text  # stable
    # defaults and empty components are left out
    assert PromptSpec().to_yaml() == "{}\n"
    assert PromptSpec(task="Do it.").to_yaml() == "task: Do it.\n"
    assert PromptSpec.from_yaml("task: Do it.\n") == PromptSpec(task="Do it.")


def test_unknown_keys_name_the_key_and_the_allowed_ones(tmp_path):
    tsk = r"spec\.yaml: unknown key 'tsk'; did you mean 'task'\? allowed keys: input, task,"
    with pytest.raises(ConfigError, match=tsk):
        PromptSpec.from_yaml("tsk: Classify.\n", "spec.yaml")
    choices = r"output_format: unknown key 'choices'; allowed keys: kind, labels, schema, description"
    with pytest.raises(ConfigError, match=choices):
        PromptSpec.from_dict({"output_format": {"kind": "labels", "choices": ["a"]}})
    with pytest.raises(ConfigError, match=r"exemplars\[1\]: unknown key 'answer'; allowed keys: input, output"):
        PromptSpec.from_dict({"exemplars": [{"input": "a", "output": "b"}, {"input": "c", "answer": "d"}]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("history:\n- role: user\n  content: hi\n  when: now\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: history\[0\]: unknown key 'when'; allowed keys: role, content"):
        PromptSpec.load(bad)


@pytest.mark.parametrize(("data", "message"), [
    ({"output_format": {"kind": "table"}}, r"output_format\.kind: must be one of 'text', 'labels', 'json'"),
    ({"output_format": {"kind": "labels"}}, r"kind 'labels' needs labels"),
    ({"output_format": {"labels": ["a", "b"]}}, r"output_format\.labels: given, but kind is 'text'; set kind: labels"),
    ({"output_format": {"kind": "json", "schema": "an object"}}, r"output_format\.schema: a JSON Schema is a mapping"),
    ({"output_format": {"kind": "labels", "labels": [True, False]}},
     r"labels\[0\]: expected a string, got bool True \(quote it"),
    ({"task": "  "}, r"task: is empty; leave it out"),
    ({"input": ""}, r"input: is empty"),
    ({"input": "Review: {text} {mask}"}, r"input: holds \{mask\}"),
    ({"input": "Review: {text"}, r"input: not a valid template"),
    ({"exemplars": [{"input": "a", "output": ""}]}, r"exemplars\[0\]\.output: is empty"),
    ({"exemplars": [{"input": {"text_b": "a"}, "output": "b"}], "input": "{text}"},
     r"exemplars\[0\]\.input: field 'text' missing"),
    ({"history": [{"role": "system", "content": "x"}]}, r"history\[0\]\.role: must be 'user' or 'assistant'"),
    ({"constraints": {"max_words": 0}}, r"constraints\.max_words: must be positive"),
    ({"chain_of_thought": True, "answer_prefix": ""}, r"answer_prefix: chain_of_thought ends with a line"),
])
def test_invalid_specs_are_refused_with_a_clear_message(data, message):
    with pytest.raises(ConfigError, match=message):
        PromptSpec.from_dict(data)
