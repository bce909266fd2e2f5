"""Relation classification: the positions each variant reads, markers, truncation, training,
saving, and macro-F1 without "Other"."""

import copy
import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from deltaprompt import Example, load
from deltaprompt.artifacts import WEIGHTS, fingerprint
from deltaprompt.relation import MARKERS, VARIANTS, RelationClassifier, RelationModel
from deltaprompt.spans import SpanError

from .conftest import TOKENIZER_OF, responsive, tiny_plm, train_steps

CLASSES = ["part", "quality"]
SENTENCE = "the movie was great and the acting was wonderful"


def relation(text: str, head: str, tail: str, label: str | None = None, nth_tail: int = 0) -> Example:
    """An example whose head and tail are the first occurrence of ``head`` and the (nth)
    occurrence of ``tail`` in ``text``."""
    start = text.index(head)
    tail_start = -1
    for _ in range(nth_tail + 1):
        tail_start = text.index(tail, tail_start + 1)
    return Example(text, label=label, meta={
        "head": {"start": start, "end": start + len(head), "text": head},
        "tail": {"start": tail_start, "end": tail_start + len(tail), "text": tail},
    })


EXAMPLES = [
    relation(SENTENCE, "movie", "acting"),
    relation("great acting and a wonderful plot", "great", "wonderful plot"),  # the very start and end
    relation("a terrible boring film with a dull plot", "dull plot", "terrible boring film"),  # tail first
]


def fresh_plm(request, kind: str):
    """A tiny PLM with its own copy of the family's tokenizer (markers change a tokenizer, and the
    session's tokenizers are shared with every other test)."""
    return tiny_plm(kind, copy.deepcopy(request.getfixturevalue(TOKENIZER_OF[kind])))


def mention(plm, ids: list[int], positions: list[int]) -> str:
    return plm.tokenizer.decode([ids[p] for p in positions]).strip()


def marker_ids(plm) -> list[int]:
    return plm.tokenizer.convert_tokens_to_ids(list(MARKERS))


@pytest.mark.parametrize("kind", ["bert", "gpt2", "t5"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_gathers_the_intended_positions(request, kind, variant):
    plm = fresh_plm(request, kind)
    model = RelationModel(plm, CLASSES, variant=variant)
    prefix, suffix = model.prefix_ids, model.suffix_ids
    for example, feature in zip(EXAMPLES, model.encode(EXAMPLES), strict=True):
        ids = feature.input_ids
        assert ids[: len(prefix)] == prefix and ids[len(ids) - len(suffix) :] == suffix
        assert mention(plm, ids, feature.head) == example.meta["head"]["text"]
        assert mention(plm, ids, feature.tail) == example.meta["tail"]["text"]
        if variant.startswith("markers"):
            e1, end1, e2, end2 = feature.markers
            assert [ids[p] for p in feature.markers] == marker_ids(plm)
            assert feature.head == list(range(e1 + 1, end1)) and feature.tail == list(range(e2 + 1, end2))
            if kind == "gpt2":  # each marker takes the space before it: no lone space token
                assert "Ġ" not in plm.tokenizer.convert_ids_to_tokens(ids)
        else:
            assert feature.markers == [] and not set(ids) & set(marker_ids(plm))
        expected = {
            "cls": (), "markers_cls": (),
            "mention_pool": (feature.head, feature.tail), "mention_pool_position": (feature.head, feature.tail),
            "markers_mention_pool": (feature.head, feature.tail),
            "markers_start": tuple([p] for p in feature.markers[::2]),
        }[variant]
        assert feature.gathered == expected
    if variant == "markers_start":
        last = model.encode(EXAMPLES[1:2])[0]  # the tail ends the text: its end marker comes last
        assert last.markers[-1] == len(last.input_ids) - len(suffix) - 1
        assert last.markers[0] == len(prefix)  # and the head starts it


def test_truncation_keeps_both_entities_cutting_the_end_first(request):
    plm = fresh_plm(request, "bert")
    example = relation(SENTENCE, "great", "acting")
    tokens = plm.tokenizer.convert_ids_to_tokens

    def encoded(max_length, variant="markers_start"):
        return RelationModel(plm, CLASSES, variant=variant, max_length=max_length).encode([example])[0]

    full = encoded(None)
    body = ["the", "movie", "was", "[E1]", "great", "[/E1]", "and", "the", "[E2]", "acting", "[/E2]", "was",
            "wonderful"]
    assert tokens(full.input_ids) == ["[CLS]", *body, "[SEP]"] and full.markers == [4, 6, 9, 11]
    end_only = encoded(13)  # 11 text tokens fit: the two after [/E2] go
    assert tokens(end_only.input_ids) == ["[CLS]", *body[:11], "[SEP]"] and end_only.truncated == 2
    both = encoded(11)  # 9 fit: both after [/E2] go, then two from the start
    assert tokens(both.input_ids) == ["[CLS]", *body[2:11], "[SEP]"] and both.truncated == 4
    assert both.markers == [2, 4, 7, 9] and both.gathered == ([2], [7])
    assert mention(plm, both.input_ids, both.head) == "great" and mention(plm, both.input_ids, both.tail) == "acting"
    tight = encoded(10)  # exactly the markers and what lies between them
    assert tokens(tight.input_ids) == ["[CLS]", *body[3:11], "[SEP]"] and tight.gathered == ([1], [6])
    with pytest.raises(ValueError, match="example 0: its two entities and their markers take 8 tokens"):
        encoded(9)
    pooled = encoded(6, "mention_pool")  # no markers: "great and the acting"
    assert tokens(pooled.input_ids) == ["[CLS]", "great", "and", "the", "acting", "[SEP]"]
    assert pooled.gathered == ([1], [4]) and pooled.truncated == 5


def trunk_states(plm, embeds: torch.Tensor) -> torch.Tensor:
    """(T, H) last hidden states of one unpadded example, from its input embeddings."""
    trunk = plm.model.get_encoder() if plm.family == "seq2seq" else plm.model.base_model
    return trunk(inputs_embeds=embeds[None]).last_hidden_state[0]


@pytest.mark.parametrize("kind", ["bert", "gpt2", "t5"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_representation_is_the_one_computed_by_hand(request, kind, variant):
    plm = fresh_plm(request, kind)
    model = RelationModel(plm, CLASSES, variant=variant).eval()
    with torch.no_grad():  # marker vectors other than the matrix rows: the input must use these
        for table in (model.markers, model.roles):
            if table is not None:
                table.weight.add_(torch.randn_like(table.weight))
    features = model.encode(EXAMPLES)
    batch = model.collate(features)
    assert batch["attention_mask"].sum(1).unique().numel() == 3  # really padded
    with torch.no_grad():
        represented = model.represent(batch)
        scores = model(batch)
        for row, feature in enumerate(features):
            ids = torch.tensor(feature.input_ids)
            embeds = plm.model.get_input_embeddings()(ids)
            if model.markers is not None:
                embeds[feature.markers] = model.markers.weight
            if model.roles is not None:
                role = torch.zeros(len(ids), dtype=torch.long)  # none: 0, head: 1, tail: 2
                role[feature.head], role[feature.tail] = 1, 2
                embeds += model.roles.weight[role]
            hidden = trunk_states(plm, embeds)
            if variant in ("cls", "markers_cls"):
                expected = {"bert": hidden[0], "gpt2": hidden[-1], "t5": hidden.mean(0)}[kind]
            else:
                expected = torch.cat([hidden[group].max(0).values for group in feature.gathered])
            torch.testing.assert_close(represented[row], expected, atol=1e-5, rtol=1e-4)
    assert represented.shape[1] == (32 if variant.endswith("cls") else 64)
    torch.testing.assert_close(scores, torch.log_softmax(model.head(represented), -1))


def test_markers_are_added_once_and_their_vectors_train_under_lora(request):
    plm = fresh_plm(request, "bert")
    pristine, rows, vocabulary = fingerprint(plm.model), plm.model.get_input_embeddings().weight.size(0), len(
        plm.tokenizer)
    first = RelationModel(plm, CLASSES, methods=["lora"])
    assert len(plm.tokenizer) == vocabulary + 4 and marker_ids(plm) == list(range(vocabulary, vocabulary + 4))
    assert plm.model.get_input_embeddings().weight.size(0) == rows + 4
    assert plm.model.get_output_embeddings().weight.size(0) == rows + 4  # the tied LM head follows
    assert all(plm.tokenizer.added_tokens_decoder[i].special for i in marker_ids(plm))
    second = RelationModel(plm, CLASSES, variant="markers_cls")
    assert len(plm.tokenizer) == vocabulary + 4 and plm.model.get_input_embeddings().weight.size(0) == rows + 4
    assert first.base_fingerprint == second.base_fingerprint == pristine  # the checkpoint as loaded
    torch.testing.assert_close(first.markers.weight, second.markers.weight)  # same start, either way
    assert not torch.equal(first.markers.weight[0], first.markers.weight[2])  # [E1] and [E2] differ

    trainable = first.trainable_parameters()
    assert {"markers.weight", "head.1.weight", "head.1.bias"} < set(trainable)
    assert first.role_of("markers.weight", first.markers.weight)[0] == "head"
    assert not plm.model.get_input_embeddings().weight.requires_grad  # LoRA froze the matrix
    batch = first.collate(first.encode(EXAMPLES))
    torch.nn.functional.nll_loss(first(batch), torch.tensor([0, 1, 0])).backward()
    assert (first.markers.weight.grad.abs().sum(1) > 0).all()
    with torch.no_grad():
        before = first(batch)
        first.markers.weight[0] += 1.0
        assert not torch.allclose(first(batch), before)  # the model reads the marker vectors
    first.eval()  # the embedding matrix's marker rows follow the trained vectors
    torch.testing.assert_close(plm.model.get_input_embeddings().weight[marker_ids(plm)], first.markers.weight)


def test_mention_pool_position_trains_its_role_embeddings(request):
    plm = fresh_plm(request, "gpt2")
    model = RelationModel(plm, CLASSES, variant="mention_pool_position", methods=[])
    assert set(model.trainable_parameters()) == {"roles.weight", "head.1.weight", "head.1.bias"}
    assert torch.equal(model.roles.weight[0], torch.zeros(32)) and model.roles.weight[1:].abs().sum() > 0
    batch = model.collate(model.encode(EXAMPLES))
    assert batch["role_ids"].tolist()[0][-9:] == [0, 1, 0, 0, 0, 0, 2, 0, 0]  # left padded: the text ends each row
    torch.nn.functional.nll_loss(model(batch), torch.tensor([0, 1, 0])).backward()
    assert (model.roles.weight.grad.abs().sum(1) > 0).all()


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_a_saved_classifier_carries_the_marker_vectors_not_the_matrix(request, tmp_path, kind):
    tokenizer = request.getfixturevalue(TOKENIZER_OF[kind])
    plm = tiny_plm(kind, copy.deepcopy(tokenizer))
    rows = plm.model.get_input_embeddings().weight.size(0)
    classifier = RelationClassifier(plm, ["Cause", "Effect", "Other"], methods=["lora"])
    with torch.no_grad():  # as if trained: every trainable tensor moved
        for parameter in classifier.model.trainable_parameters().values():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    expected = classifier.predict_log_proba(EXAMPLES)
    classifier.save(tmp_path / "clf")
    saved = load_file(str(tmp_path / "clf" / WEIGHTS))
    assert saved["markers.weight"].shape == (4, 32)
    assert all(tensor.size(0) != rows + 4 for tensor in saved.values())  # no embedding matrix

    fresh = tiny_plm(kind, copy.deepcopy(tokenizer))  # the base checkpoint, loaded again
    loaded = load(tmp_path / "clf", plm=fresh)
    assert isinstance(loaded, RelationClassifier) and loaded.negative_class == "Other"
    assert len(fresh.tokenizer) == len(tokenizer) + 4 and fresh.model.get_input_embeddings().weight.size(0) == rows + 4
    torch.testing.assert_close(loaded.model.markers.weight, classifier.model.markers.weight)
    torch.testing.assert_close(fresh.model.get_input_embeddings().weight[marker_ids(fresh)],
                               classifier.model.markers.weight)
    torch.testing.assert_close(torch.tensor(loaded.predict_log_proba(EXAMPLES)), torch.tensor(expected))


def test_bad_spans_name_the_example(request):
    model = RelationModel(fresh_plm(request, "bert"), CLASSES)
    text = "a dull plot"
    bad = {
        "out of range": {"head": {"start": 0, "end": 1}, "tail": {"start": 7, "end": 40}},
        "empty": {"head": {"start": 2, "end": 2}, "tail": {"start": 7, "end": 11}},
        "overlap": {"head": {"start": 2, "end": 6}, "tail": {"start": 5, "end": 11}},
        "reads": {"head": {"start": 2, "end": 6, "text": "plot"}, "tail": {"start": 7, "end": 11}},
        "no token": {"head": {"start": 1, "end": 2}, "tail": {"start": 7, "end": 11}},
    }
    for words, meta in bad.items():
        with pytest.raises(SpanError, match=f"example 1: .*{words}"):
            model.encode([EXAMPLES[0], Example(text, meta=meta)])
    with pytest.raises(ValueError, match=r"example 0: the marker \[E1\] occurs 2 times"):
        model.encode([relation("[E1] " + SENTENCE, "movie", "acting")])


def test_refusals(request):
    plm = fresh_plm(request, "gpt2")
    for method in ("prompt_tuning", "p_tuning"):
        with pytest.raises(ValueError, match="relation model has none"):
            RelationModel(plm, CLASSES, methods=[method])
    with pytest.raises(ValueError, match="variant"):
        RelationModel(plm, CLASSES, variant="entity_start")
    with pytest.raises(ValueError, match="negative_class"):
        RelationClassifier(plm, CLASSES, negative_class="none")
    with pytest.raises(ValueError, match="markers"):
        RelationModel(plm, CLASSES, markers=("<e1>", "</e1>", "<e1>", "</e2>"))
    assert RelationClassifier(plm, CLASSES).negative_class is None  # no "Other" among the classes


# Which relation holds depends on the pair, not on the sentence: the same sentences, other pairs.
TRAIN = [
    relation(SENTENCE, "movie", "great", "quality"),
    relation(SENTENCE, "acting", "wonderful", "quality"),
    relation(SENTENCE, "movie", "acting", "part"),
    relation("a terrible boring film with a dull plot", "film", "terrible", "quality"),
    relation("a terrible boring film with a dull plot", "film", "plot", "part"),
    relation("a terrible boring film with a dull plot", "plot", "dull", "quality"),
    relation("great acting and a wonderful plot", "acting", "great", "quality"),
    relation("great acting and a wonderful plot", "acting", "plot", "part"),
]


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_a_markers_variant_learns_with_lora(request, kind):
    plm = responsive(fresh_plm(request, kind))
    model = RelationModel(plm, CLASSES, variant="markers_start", dropout=0.0, methods=["lora"]).eval()
    start = model.markers.weight.detach().clone()
    losses = train_steps(model, TRAIN, steps=30, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses
    assert not torch.equal(model.markers.weight, start)


def test_macro_f1_leaves_out_other(request):
    classes = ["Cause", "Effect", "Other"]
    classifier = RelationClassifier(fresh_plm(request, "bert"), classes, variant="mention_pool")
    model = classifier.model
    gold = ["Other", "Cause", "Other", "Effect"]
    examples = [Example(e.text, label=g, meta=e.meta) for e, g in zip([*EXAMPLES, EXAMPLES[0]], gold, strict=True)]
    features = model.encode(examples)
    # All predicted Other: its F1 (2/3) counts for nothing. All Cause: Cause 2/5, Effect 0.
    cases = {"Other": (0.0, 2 / 9, 0.5), "Cause": (0.2, 2 / 15, 0.25)}
    for predicted, (without_other, with_other, accuracy) in cases.items():
        with torch.no_grad():  # every example to one class
            model.head[1].weight.zero_()
            model.head[1].bias.copy_(torch.tensor([10.0 if c == predicted else 0.0 for c in classes]))
        evaluation = classifier.evaluate(examples)
        assert evaluation.predictions == [predicted] * 4 and evaluation.ignore == ("Other",)
        assert evaluation.macro_f1 == pytest.approx(without_other)
        assert dataclasses.replace(evaluation, ignore=()).macro_f1 == pytest.approx(with_other)
        metrics = model.dev_metrics(features, model.targets(examples, features, "dev"), batch_size=2)
        assert metrics["macro_f1"] == pytest.approx(without_other) and metrics["accuracy"] == accuracy


def test_fit_picks_the_best_checkpoint_by_macro_f1_without_other(request):
    plm = responsive(fresh_plm(request, "bert"))
    classifier = RelationClassifier(plm, ["part", "quality", "Other"], methods=["lora"], dropout=0.0)
    dev = [*TRAIN[:3], relation(SENTENCE, "great", "wonderful", "Other")]
    classifier.fit(TRAIN, dev, epochs=4, batch_size=4, metric="macro_f1", head_lr=1e-2, tensorboard=False)
    model = classifier.model
    features = model.encode(dev)
    metrics = model.dev_metrics(features, model.targets(dev, features, "dev"), batch_size=4)
    assert classifier.result.best_metric == pytest.approx(metrics["macro_f1"])  # the best weights are kept
    assert metrics["macro_f1"] == pytest.approx(classifier.evaluate(dev).macro_f1)
