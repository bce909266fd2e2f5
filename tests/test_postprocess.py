"""Post-processing steps on adversarial generations, the pipeline, and its structured errors."""

from __future__ import annotations

import json
import pickle

import pytest
import yaml

from deltaprompt.config import read_yaml
from deltaprompt.postprocess import (
    STEPS,
    Answer,
    Blocklist,
    Dedupe,
    Json,
    Labels,
    Normalize,
    Pipeline,
    PostProcessError,
    Processed,
    Strip,
    Truncate,
    extract_answer,
    make_pipeline,
    register_step,
)

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


def error_of(step, value) -> PostProcessError:
    with pytest.raises(PostProcessError) as caught:
        step(value)
    return caught.value


# ----------------------------------------------------------------------------- strip / normalize

def test_strip_collapses_every_kind_of_whitespace():
    assert Strip()("  hello \t\n  world\u00a0 again\u3000 ") == "hello world again"
    assert Strip()("zero\u200bwidth") == "zerowidth"


def test_strip_empty_and_whitespace_only_give_empty_text():
    assert Strip()("") == ""
    assert Strip()(" \n\t ") == ""


def test_strip_keep_newlines_keeps_lines_and_one_blank_line():
    text = "  first   line \n\n\n\n second\tline  \n"
    assert Strip(keep_newlines=True)(text) == "first line\n\nsecond line"


def test_normalize_nfkc_quotes_case_and_punctuation():
    text = "\uff21\uff22\uff23 \u201cQuoted\u201d don\u2019t  well-known, \ufb01ne!"
    assert Normalize()(text) == 'ABC "Quoted" don\'t well-known, fine!'
    assert Normalize(lower=True, strip_punctuation=True)(text) == "abc quoted dont well known fine"


def test_normalize_rejects_bad_options():
    with pytest.raises(ValueError, match="form"):
        Normalize(form="NFX")
    with pytest.raises(ValueError, match="lower"):
        Normalize(lower="yes")


# ----------------------------------------------------------------------------- answer

@pytest.mark.parametrize(("text", "answer"), [
    ("Let me think. 3 + 4 = 7.\nAnswer: 7", "7"),
    ("Answer: maybe 5\nWait, recount.\nanswer: 6", "6"),            # the last cue wins, any case
    ("Reasoning...\n**Final Answer:** Paris", "Paris"),             # markdown bold around the cue
    ("Reasoning...\n**Answer**: **Paris**", "Paris"),               # bold cue and bold answer
    ("Answer:\n\n  positive  \nHope this helps!", "positive"),       # answer on the next line only
    ("The answer depends on the film.\nnegative", "negative"),      # no cue: the last non-empty line
    ("R\u00e9ponse pr\u00e9cise.\nAnswer: caf\u00e9 \u2615", "caf\u00e9 \u2615"),
])
def test_extract_answer_takes_the_text_after_the_last_cue(text, answer):
    assert extract_answer(text) == answer
    assert Answer()(text) == answer


def test_extract_answer_with_a_custom_cue_and_multiline():
    text = "thinking...\nSo the result is:\n{\n  \"a\": 1\n}"
    assert extract_answer(text, "So the result is:", multiline=True) == '{\n  "a": 1\n}'
    assert extract_answer(text, "So the result is:") == "{"


def test_answer_prose_mention_of_the_word_is_not_a_cue():
    # "the answer is" has no colon: not the cue "Answer:", so the last line is used
    assert Answer()("I think the answer is here\nblue") == "blue"


def test_answer_strict_without_cue_is_a_structured_error():
    error = error_of(Answer(strict=True), "I would say blue")
    assert (error.step, error.reason) == ("answer", "no_answer")
    assert "Answer:" in error.retry_hint()


@pytest.mark.parametrize("text", ["", "   \n\t", "Reasoning...\nAnswer:   "])
def test_answer_empty_output_or_empty_answer_is_an_error(text):
    error = error_of(Answer(), text)
    assert error.reason == "empty"
    assert extract_answer(text) == ""


# ----------------------------------------------------------------------------- json

@pytest.mark.parametrize(("text", "value"), [
    ('{"a": {"b": {"c": [1, {"d": 2}]}}}', {"a": {"b": {"c": [1, {"d": 2}]}}}),   # nested braces
    ('Sure! {"a": "}{ not a brace", "b": "x\\"}"} done', {"a": "}{ not a brace", "b": 'x"}'}),  # in strings
    ('{"a": 1} and then {"b": 2}', {"a": 1}),                                       # first valid wins
    ("{name: 'x'} sorry, I meant {\"name\": \"x\"}", {"name": "x"}),               # invalid, then valid
    ('Use { to open.\nResult: {"ok": true}', {"ok": True}),                        # stray brace in prose
    ('Here it is:\n```json\n{"a": [1, 2]}\n```\nThanks', {"a": [1, 2]}),           # code fence
    ('Example: {"a": 0}\n```json\n{"a": 1}\n```', {"a": 1}),                        # fenced block first
    ('{"t\u00eate": "\u00e9t\u00e9 \u2603"}', {"t\u00eate": "\u00e9t\u00e9 \u2603"}),  # unicode
])
def test_json_finds_the_first_complete_object(text, value):
    assert Json()(text) == value


def test_json_truncated_object_says_where_it_ended():
    text = 'Result: {"name": "Ada", "tags": ["x", {"y": 1'
    error = error_of(Json(), text)
    assert (error.step, error.reason) == ("json", "truncated_json")
    assert error.details["start"] == text.index("{")
    assert error.details["end"] == len(text)
    assert error.details["open_braces"] == 2
    assert error.details["in_string"] is False
    assert "cut off" in error.retry_hint()


def test_json_truncated_inside_a_string():
    error = error_of(Json(), '{"name": "Ad')
    assert error.reason == "truncated_json" and error.details["in_string"] is True


def test_json_no_object_and_empty_output():
    assert error_of(Json(), "I cannot answer that.").reason == "no_json"
    assert error_of(Json(), "[1, 2, 3]").reason == "no_json"  # an array is not an object
    assert error_of(Json(), "").reason == "empty"
    assert error_of(Json(), "  \n ").reason == "empty"


def test_json_only_broken_objects_is_invalid_json_with_the_decoder_message():
    error = error_of(Json(), "{name: 'x'}")
    assert error.reason == "invalid_json"
    assert "line 1 column 2" in error.details["error"]
    assert "not valid JSON" in error.retry_hint()


def test_json_schema_failure_is_structured_with_path_and_all_messages():
    error = error_of(Json(schema=PERSON), 'Here: {"name": "Ada", "age": "thirty"}')
    assert (error.step, error.reason) == ("json", "schema")
    assert error.details["path"] == "$.age"
    assert "'thirty' is not of type 'integer'" in error.details["message"]
    assert error.details["value"] == {"name": "Ada", "age": "thirty"}
    json.dumps(error.to_dict())  # plain data, fit for a predictions file

    several = error_of(Json(schema=PERSON), '{"age": -1}')
    messages = [e["message"] for e in several.details["errors"]]
    assert "'name' is a required property" in messages
    assert "-1 is less than the minimum of 0" in messages
    assert {e["path"] for e in several.details["errors"]} == {"$", "$.age"}


def test_json_schema_retry_hint_names_the_required_keys():
    hint = error_of(Json(schema=PERSON), '{"name": "Ada"}').retry_hint()
    assert hint.startswith("Your previous output did not match")
    assert "'age' is a required property" in hint
    assert '"name" (string), "age" (integer)' in hint


def test_json_valid_under_schema_and_parsed_values_are_validated():
    assert Json(schema=PERSON)('```json\n{"name": "Ada", "age": 36}\n```') == {"name": "Ada", "age": 36}
    assert error_of(Json(schema=PERSON), {"name": "Ada"}).reason == "schema"


def test_json_invalid_schema_is_refused_when_the_step_is_built():
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        Json(schema={"type": "strnig"})


# ----------------------------------------------------------------------------- labels

LABELS = ["negative", "positive", "neutral"]


@pytest.mark.parametrize(("text", "label"), [
    ("Positive", "positive"),                        # exact, any case
    ('  "NEGATIVE."  ', "negative"),                 # quotes and punctuation around it
    ("I'd call this review positive overall.", "positive"),   # the only label word
    ("Sentiment: **neutral**", "neutral"),
    ("It is postive", "positive"),                   # typo: fuzzy
    ("n\u00e9gatif? no: negative!", "negative"),
])
def test_labels_maps_free_text_to_a_label(text, label):
    assert Labels(LABELS)(text) == label


@pytest.mark.parametrize("text", ["unpositive", "non-negative reviews", "positively sure"])
def test_labels_does_not_match_a_label_inside_a_longer_word(text):
    assert error_of(Labels(LABELS), text).reason == "no_label"


def test_labels_ambiguous_unless_first():
    error = error_of(Labels(LABELS), "It is positive, or maybe negative")
    assert error.reason == "ambiguous"
    assert error.details["found"] == ["positive", "negative"]
    assert "exactly one of: negative, positive, neutral" in error.retry_hint()
    assert Labels(LABELS, first=True)("It is positive, or maybe negative") == "positive"


def test_labels_a_longer_label_contains_a_shorter_one():
    step = Labels(["entailment", "not_entailment"])
    assert step("not entailment") == "not_entailment"
    assert step("The relation: not-entailment.") == "not_entailment"
    assert step("Answer: entailment") == "entailment"


def test_labels_nothing_or_empty():
    assert error_of(Labels(LABELS), "I have no opinion").reason == "no_label"
    assert error_of(Labels(LABELS), "   ").reason == "empty"


def test_labels_short_words_are_not_fuzzy_matched():
    assert error_of(Labels(["yes", "no"]), "now").reason == "no_label"


def test_labels_options_are_checked():
    with pytest.raises(ValueError, match="at least one"):
        Labels([])
    with pytest.raises(ValueError, match="same label"):
        Labels(["Yes", "yes"])
    with pytest.raises(ValueError, match="cutoff"):
        Labels(LABELS, cutoff=1.5)


# ----------------------------------------------------------------------------- dedupe

@pytest.mark.parametrize(("text", "clean"), [
    ("the cat the cat the cat", "the cat"),
    ("I agree. I agree. I agree.", "I agree."),
    ("It was good, it was good, it was good.", "it was good."),          # case/punct-insensitive, last copy kept
    ("Intro: the best film the best film ever", "Intro: the best film ever"),
    ("line one\nline one\nline one\nnext line", "line one\nnext line"),  # repeated lines
    ("a b a b c d c d", "a b c d"),
    ("Le caf\u00e9 est bon. Le caf\u00e9 est bon.", "Le caf\u00e9 est bon."),
    ("no repeats at all here", "no repeats at all here"),
    ("", ""),
])
def test_dedupe_collapses_repeated_phrases(text, clean):
    assert Dedupe()(text) == clean


def test_dedupe_min_words_controls_single_word_repeats():
    assert Dedupe()("very very good") == "very very good"
    assert Dedupe(min_words=1)("very very very good") == "very good"
    with pytest.raises(ValueError, match="min_words"):
        Dedupe(min_words=0)


# ----------------------------------------------------------------------------- blocklist

def test_blocklist_removes_whole_words_next_to_punctuation():
    step = Blocklist(["damn", "bad word"])
    assert step("Damn, that is good") == "that is good"
    assert step("This is damn, good!") == "This is, good!"
    assert step("What a (damn) film") == "What a film"
    assert step("a Bad   word here") == "a here"                       # a phrase across spaces, any case
    assert step("damnation and undamned stay") == "damnation and undamned stay"
    assert step("first\ndamn it\nlast") == "first\nit\nlast"


def test_blocklist_reject_mode_is_an_error_listing_the_words():
    step = Blocklist(["damn", "bad word"], mode="reject")
    error = error_of(step, "Damn! That BAD word again, damn.")
    assert (error.step, error.reason) == ("blocklist", "blocked")
    assert error.details["found"] == ["damn", "bad word"]
    assert '"damn"' in error.retry_hint()
    assert step("a fine, clean reply") == "a fine, clean reply"


def test_blocklist_unicode_and_bad_mode():
    assert Blocklist(["caf\u00e9"])("un caf\u00e9, merci") == "un, merci"
    with pytest.raises(ValueError, match="remove"):
        Blocklist(["x"], mode="drop")


# ----------------------------------------------------------------------------- truncate

def test_truncate_exactly_at_the_limit_is_unchanged():
    assert Truncate(max_words=3, ellipsis=True)("one two three") == "one two three"
    assert Truncate(max_chars=11, ellipsis=True)("hello world") == "hello world"


def test_truncate_words_and_chars_at_word_boundaries():
    assert Truncate(max_words=3)("one two three four") == "one two three"
    assert Truncate(max_words=3, ellipsis=True)("one,  two, three, four") == "one,  two, three\u2026"
    assert Truncate(max_chars=12)("hello world again") == "hello world"   # not "hello world " nor "hello world a"
    assert Truncate(max_chars=10, ellipsis="...")("hello world again") == "hello..."
    assert len(Truncate(max_chars=10, ellipsis="...")("hello world again")) <= 10
    assert Truncate(max_chars=4)("abcdefgh") == "abcd"                    # one long word: cut inside
    assert Truncate(max_words=2, max_chars=100)("\u00e9t\u00e9 \u2603 snow") == "\u00e9t\u00e9 \u2603"
    assert Truncate(max_words=5)("") == ""


def test_truncate_options_are_checked():
    with pytest.raises(ValueError, match="max_words, max_chars"):
        Truncate()
    with pytest.raises(ValueError, match="positive whole number"):
        Truncate(max_words=0)
    with pytest.raises(ValueError, match="does not fit"):
        Truncate(max_chars=1, ellipsis=True)


# ----------------------------------------------------------------------------- pipeline

def test_pipeline_chain_of_thought_to_label():
    pipeline = make_pipeline(["strip", "answer", {"labels": {"labels": ["negative", "positive"]}}])
    assert pipeline("Step by step: the plot is dull...\n\nFinal answer: **Negative**.") == "negative"


def test_pipeline_apply_returns_the_error_instead_of_raising():
    pipeline = make_pipeline(["strip", {"json": {"schema": PERSON}}])
    result = pipeline.apply('{"name": "Ada", "age": "x"}')
    assert isinstance(result, Processed)
    assert result.value is None and not result.ok
    assert (result.error.step, result.error.reason, result.error.details["path"]) == ("json", "schema", "$.age")
    assert result.text == '{"name": "Ada", "age": "x"}'
    with pytest.raises(PostProcessError):
        pipeline('{"name": "Ada", "age": "x"}')

    good = pipeline.apply(' {"name": "Ada", "age": 36} ')
    assert good.ok and good.value == {"name": "Ada", "age": 36} and good.error is None


def test_pipeline_describe_round_trips_through_yaml():
    config = ["strip", {"answer": {"strict": True}}, {"json": {"schema": PERSON}},
              {"truncate": {"max_words": 5, "ellipsis": True}}, {"normalize": {"lower": True}}]
    pipeline = make_pipeline(config)
    assert pipeline.describe() == config
    text = yaml.safe_dump({"postprocess": pipeline.describe()})
    assert make_pipeline(read_yaml(text, "test")["postprocess"]).describe() == config


def test_pipeline_text_step_after_json_is_a_clear_error():
    result = make_pipeline(["json", "strip"]).apply('{"a": 1}')
    assert result.error.reason == "not_text"
    assert "before json" in result.error.message


def test_make_pipeline_errors_name_what_is_known():
    with pytest.raises(ValueError, match="known: answer, blocklist, dedupe, json, labels"):
        make_pipeline(["nope"])
    with pytest.raises(ValueError, match="did you mean 'max_words'"):
        make_pipeline([{"truncate": {"max_word": 3}}])
    with pytest.raises(ValueError, match="needs the option"):
        make_pipeline(["labels"])
    with pytest.raises(ValueError, match="one-key mapping"):
        make_pipeline([{"strip": {}, "answer": {}}])
    assert len(make_pipeline(None)) == 0 and make_pipeline([])("same") == "same"


def test_register_step_makes_a_named_step_available():
    class Upper:
        name = "upper_test"

        def __init__(self, exclaim: bool = False):
            self.exclaim = exclaim

        def __call__(self, value):
            if not value:
                raise PostProcessError(self.name, "empty", value)
            return value.upper() + ("!" if self.exclaim else "")

    register_step("upper_test", Upper)
    try:
        pipeline = make_pipeline(["strip", {"upper_test": {"exclaim": True}}])
        assert pipeline("  hi  there ") == "HI THERE!"
        assert pipeline.apply("   ").error.reason == "empty"
        with pytest.raises(ValueError, match="already registered"):
            register_step("upper_test", Strip)
    finally:
        del STEPS["upper_test"]


def test_a_user_step_that_raises_something_else_becomes_a_structured_error():
    def broken(value):
        raise KeyError("boom")

    result = Pipeline([broken]).apply("x")
    assert result.error.reason == "exception" and "KeyError" in result.error.message


def test_error_to_dict_and_pickle():
    error = error_of(Json(), '{"a": [1, 2')
    data = error.to_dict()
    assert data["step"] == "json" and data["reason"] == "truncated_json" and data["output"] == '{"a": [1, 2'
    again = pickle.loads(pickle.dumps(error))
    assert (again.step, again.reason, again.details) == (error.step, error.reason, error.details)
    assert isinstance(error, ValueError)
