"""Entity typing and relation prompts are plain PromptClassifier uses: templates read the
mention (``entity``) or the span texts of ``head`` / ``tail``, and train like any prompt."""

from __future__ import annotations

import pytest

from deltaprompt import PromptClassifier
from deltaprompt.data import as_examples
from deltaprompt.spans import entity_typing_examples, tagged_example

from .conftest import plm_of, responsive, tiny_plm, train_steps

TYPING = {  # the mask ends the causal template: a decoder predicts the next word
    "masked": '{"meta": "sentence"} In this sentence, {"meta": "entity"} is a {"mask"}.',
    "causal": '{"meta": "sentence"} In this sentence, {"meta": "entity"} is a {"mask"}',
}
RELATION = {
    "masked": '{text} {"meta": "tail"} is the {"mask"} of {"meta": "head"}.',
    "causal": '{text} Of {"meta": "head"}, {"meta": "tail"} is the {"mask"}',
}
TAGGED = [
    tagged_example(["Peter", "visited", "Paris"], ["B-PER", "O", "B-LOC"]),
    tagged_example(["Anna", "Smith", "likes", "Rome"], ["B-PER", "I-PER", "O", "B-LOC"]),
    tagged_example(["Paris", "loves", "Anna"], ["B-LOC", "O", "B-PER"]),
]
TYPE_WORDS = {"PER": "acting", "LOC": "film"}
# A SemEval record as the benchmark stores it.
SEMEVAL = {"text": "The system as described above has its greatest application in an arrayed configuration of "
                   "antenna elements.", "head": {"start": 73, "end": 86, "text": "configuration"},
           "tail": {"start": 98, "end": 106, "text": "elements"}, "label": "Component-Whole(e2,e1)"}


def encoded_as_rendered(clf: PromptClassifier, example) -> list[int]:
    """The ids the classifier feeds the PLM, checked against the tokenizer's own reading of the
    filled-in template; returned for further checks."""
    tokenizer = clf.model.plm.tokenizer
    (encoding,) = clf.model.encode([example])
    rendered = clf.template.render(example, mask=tokenizer.mask_token or "")
    expected = tokenizer(rendered.rstrip() if clf.model.plm.family == "causal" else rendered)["input_ids"]
    assert encoding.input_ids == expected, rendered
    return encoding.input_ids


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_entity_typing_template_reads_each_mention(request, kind):
    plm = plm_of(request, kind)
    clf = PromptClassifier(plm, TYPING[plm.family], TYPE_WORDS)
    examples = entity_typing_examples(TAGGED)
    assert [(e.meta["entity"], e.label) for e in examples] == [
        ("Peter", "PER"), ("Paris", "LOC"), ("Anna Smith", "PER"), ("Rome", "LOC"), ("Paris", "LOC"), ("Anna", "PER")]
    for example in examples:
        rendered = clf.template.render(example)
        assert rendered.startswith(f"{example.text} In this sentence, {example.meta['entity']} is a ")
        ids = encoded_as_rendered(clf, example)
        mention = plm.tokenizer(f" {example.meta['entity']} is", add_special_tokens=False)["input_ids"]
        assert any(ids[i : i + len(mention)] == mention for i in range(len(ids))), "the mention is not where expected"
    assert clf.predict_proba(examples).shape == (len(examples), 2)


def test_entity_typing_trains_with_lora(gpt2_tokenizer):
    clf = PromptClassifier(responsive(tiny_plm("gpt2", gpt2_tokenizer)), TYPING["causal"], TYPE_WORDS,
                           methods=["lora"])
    examples = entity_typing_examples(TAGGED)
    losses = train_steps(clf.model, examples, 25, 1e-2)
    assert losses[-1] < 0.1 * losses[0]
    assert clf.predict(examples) == [e.label for e in examples]


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_relation_template_reads_the_span_texts(request, kind):
    plm = plm_of(request, kind)
    clf = PromptClassifier(plm, RELATION[plm.family], {"Component-Whole(e2,e1)": "part", "Other": "news"})
    (example,) = as_examples([SEMEVAL])
    assert example.meta["head"]["text"] == "configuration"  # the span mapping stays whole in meta
    rendered = clf.template.render(example)
    if plm.family == "masked":
        assert rendered == f"{SEMEVAL['text']} elements is the [MASK] of configuration."
    else:
        assert rendered == f"{SEMEVAL['text']} Of configuration, elements is the [MASK]"
    encoded_as_rendered(clf, example)
