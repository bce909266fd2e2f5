"""The template parser: every OpenPrompt form, and malformed input with exact error positions."""

import pytest

from deltaprompt import Example, Template, TemplateError
from deltaprompt.template import register_post_processor


def kinds(template: Template) -> list[tuple[str, str | None, str]]:
    return [(p.kind, p.value, p.prefix) for p in template.parts]


def test_placeholder_text_and_mask():
    t = Template('{"placeholder":"text_a"} It was {"mask"}.')
    assert kinds(t) == [("field", "text", ""), ("text", "It was", " "), ("mask", None, " "), ("text", ".", "")]
    assert t.fields == ("text",)
    assert t.num_masks == 1
    assert t.render(Example("Great film")) == "Great film It was [MASK]."


def test_meta_fields_and_text_b_alias():
    t = Template('{"meta": "premise"} Question: {"placeholder": "text_b"}? Answer: {"mask"}')
    assert t.fields == ("premise", "text_b")
    example = Example("unused", text_b="Is it raining", meta={"premise": "It rains."})
    assert t.render(example, mask="<M>") == "It rains. Question: Is it raining? Answer: <M>"


def test_shorthand_names():
    t = Template("Review: {text}\nSentiment: {mask}")
    assert kinds(t) == [
        ("text", "Review:", ""),
        ("field", "text", " "),
        ("text", "\nSentiment:", ""),
        ("mask", None, " "),
    ]


def test_special_token_block():
    t = Template('{"meta": "q"} {"special": "<eos>"} {"mask"}')
    assert [p.kind for p in t.parts] == ["field", "special", "mask"]
    assert t.parts[1].value == "<eos>"


def test_soft_tokens_random_text_initialised_and_duplicated():
    t = Template('{"soft"} {"soft": "It was"} {"soft": None, "duplicate": 20} {"text_a"} {"mask"}'
                 .replace('{"text_a"}', '{"placeholder": "text_a"}'))
    groups = t.soft_groups
    assert [(g.init_text, g.length) for g in groups] == [(None, 1), ("It was", None), (None, 20)]
    soft_parts = [p for p in t.parts if p.kind == "soft"]
    assert [p.soft_group for p in soft_parts] == [0, 1, 2]
    assert t.has_soft_tokens


def test_shared_soft_ids_point_at_one_group():
    t = Template('{"soft": "great", "soft_id": 1} {"text_a"} {"soft_id": 1} {"soft_id": 2} {"mask"} {"soft_id": 2}'
                 .replace('{"text_a"}', '{"placeholder": "text_a"}'))
    soft_parts = [p for p in t.parts if p.kind == "soft"]
    assert [p.soft_group for p in soft_parts] == [0, 0, 1, 1]
    assert len(t.soft_groups) == 2
    assert t.soft_groups[0].init_text == "great"
    assert t.soft_groups[1].init_text is None and t.soft_groups[1].length == 1


def test_shortenable_defaults_and_override():
    t = Template('{"meta": "a"} {"meta": "b", "shortenable": False} {"text": "x", "shortenable": True} {"mask"}')
    assert [p.shortenable for p in t.parts] == [True, False, True, False]


def test_post_processing_by_name_and_list():
    t = Template('{"meta": "q", "post_processing": "rstrip_punct"}? {"meta": "a", "post_processing": ["strip", "lower"]} {"mask"}')
    example = Example("", meta={"q": "Is it good?!", "a": "  YES "})
    assert t.render(example) == "Is it good? yes [MASK]"


def test_post_processing_with_a_python_callable_through_the_api():
    t = Template('{"meta": "q", "post_processing": "shout"} {"mask"}', post_processors={"shout": lambda s: s.upper() + "!"})
    assert t.render(Example("", meta={"q": "hi"})) == "HI! [MASK]"
    register_post_processor("reverse_for_test", lambda s: s[::-1])
    assert Template('{"meta": "q", "post_processing": "reverse_for_test"}').render(Example("", meta={"q": "ab"})) == "ba"


def test_add_prefix_space_key_is_respected():
    t = Template('{"meta": "q"}{"mask", "add_prefix_space": " "}'.replace('{"mask", "add_prefix_space": " "}', '{"mask": None, "add_prefix_space": " "}'))
    assert t.parts[1].prefix == " "


def test_braces_inside_quoted_values_do_not_end_the_block():
    t = Template('{"text": "a } b"} {"mask"}')
    assert t.parts[0].value == "a } b"


# ----------------------------------------------------------------------------- malformed input

def error_of(text: str) -> TemplateError:
    with pytest.raises(TemplateError) as caught:
        Template(text)
    return caught.value


def test_unclosed_brace_points_at_its_opening():
    error = error_of('{"placeholder": "text_a"} It was {"mask".')
    assert error.position == 33
    assert "never closed" in str(error)
    assert str(error).splitlines()[-1] == " " * (2 + 33) + "^"


def test_stray_closing_brace():
    error = error_of('It was } {"mask"}')
    assert error.position == 7
    assert "without a matching" in str(error)


def test_unknown_key_points_at_the_key():
    error = error_of('{"placeholder": "text_a"} It was {"maks": None}.')
    assert error.position == 34
    assert "unknown key 'maks'" in str(error)


def test_unknown_key_in_set_form():
    error = error_of('{"placeholder": "text_a"} {"maks"}')
    assert error.position == 27
    assert "unknown key 'maks'" in str(error)


def test_lambda_is_refused_at_its_position():
    text = '{"meta": "q", "post_processing": lambda x: x.strip()} {"mask"}'
    error = error_of(text)
    assert error.position == text.index("lambda")
    assert "lambda" in str(error) and "post_processors" in str(error)


def test_lambda_is_never_run():
    calls = []
    text = '{"meta": "q", "post_processing": __import__("os").system("echo pwned")} {"mask"}'
    error = error_of(text)
    assert error.position == text.index("__import__")
    assert "only literal values" in str(error)
    assert calls == []


def test_syntax_error_position():
    text = 'x {"meta": "q",, "shortenable": False}'
    error = error_of(text)
    assert error.position == text.index(",,") + 1
    assert "invalid block" in str(error)


def test_unknown_post_processor_and_bad_values():
    assert "unknown post-processor 'nope'" in str(error_of('{"meta": "q", "post_processing": "nope"}'))
    assert "duplicate" in str(error_of('{"mask": None, "duplicate": 3}'))
    assert "positive integer" in str(error_of('{"soft": None, "duplicate": 0}'))
    assert "exactly one of" in str(error_of('{"meta": "q", "mask": None}'))
    assert "cannot be shortenable" in str(error_of('{"mask": None, "shortenable": True}'))
    assert "empty" in str(error_of("   "))


def test_soft_id_cannot_be_redefined():
    error = error_of('{"soft": "good", "soft_id": 1} {"mask"} {"soft": "bad", "soft_id": 1}')
    assert error.position == 40
    assert "soft_id 1 was defined at position 0" in str(error)


def test_classification_templates_need_one_mask():
    with pytest.raises(ValueError, match="exactly one"):
        _ = Template("{text} no mask here").mask_part
    with pytest.raises(ValueError, match="has 2"):
        _ = Template("{mask} {text} {mask}").mask_part
