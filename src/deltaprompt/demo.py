"""The README's demo: zero-shot news topics and sentiment with SmolLM2-135M on a CPU."""

from __future__ import annotations

import argparse
import time

from .classifier import PromptClassifier
from .data import Example, bbc_news_examples, load_task, sample_per_class
from .plm import load_plm

TOPIC_TEMPLATE = "News article: {title}\n{text}\nThis article is about {mask}"
TOPIC_WORDS = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sports": "sport",
    "tech": "technology",
}
SENTIMENT_TEMPLATE = "Review: {text}\nSentiment: {mask}"
SENTIMENT_WORDS = {"negative": "negative", "positive": "positive"}

# Used only when the SST-2 benchmark data is not next to the checkout.
OWN_REVIEWS = [
    ("A warm, funny film with two wonderful lead performances.", "positive"),
    ("I loved every minute of it and would happily watch it again.", "positive"),
    ("The best thriller I have seen this year: tense, smart and beautifully shot.", "positive"),
    ("A charming little story that left the whole audience smiling.", "positive"),
    ("Gorgeous music, sharp dialogue, and a moving ending.", "positive"),
    ("An absolute delight from start to finish.", "positive"),
    ("Dull, slow and far too long; I nearly fell asleep.", "negative"),
    ("The plot makes no sense and the acting is wooden.", "negative"),
    ("A tedious mess that wastes a talented cast.", "negative"),
    ("I want those two hours of my life back.", "negative"),
    ("Lazy jokes, flat characters and an ending that insults the viewer.", "negative"),
    ("One of the worst films I have ever sat through.", "negative"),
]


def _section(title: str) -> None:
    print(f"\n=== {title} ===")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    plm = load_plm(args.model, args.family, device=args.device)
    print(f"loaded {args.model} ({plm.family} LM) in {time.perf_counter() - started:.1f} s")

    _section(f"BBC News topics: {args.per_class} articles per topic, zero-shot")
    articles, topics = bbc_news_examples()
    sample = sample_per_class(articles, args.per_class, seed=13, labels=topics)
    print(f"template: {TOPIC_TEMPLATE!r}\nlabel words: {TOPIC_WORDS}")
    topic_classifier = PromptClassifier(
        plm, TOPIC_TEMPLATE, TOPIC_WORDS, classes=topics, batch_size=args.batch_size,
        max_length=args.max_length or 128, truncation="head",  # keep each article's opening
    )
    _report(topic_classifier, sample)

    try:
        task = load_task("sst2", args.data_dir)
        reviews = task.load("test", limit=args.sentiment_limit)
        source = f"SST-2 test, first {len(reviews)} sentences"
    except FileNotFoundError:
        reviews = [Example(text, label=label) for text, label in OWN_REVIEWS]
        source = f"{len(reviews)} built-in reviews (SST-2 not found under ../shared/data)"
    _section(f"Sentiment: {source}, zero-shot")
    print(f"template: {SENTIMENT_TEMPLATE!r}\nlabel words: {SENTIMENT_WORDS}")
    sentiment = PromptClassifier(
        plm, SENTIMENT_TEMPLATE, SENTIMENT_WORDS, classes=("negative", "positive"),
        batch_size=args.batch_size, max_length=args.max_length, truncation=args.truncation,
    )
    _report(sentiment, reviews)
    print("\nYour own text:")
    mine = ["A gripping, funny film.", "Dull, slow and far too long."]
    for text, label, probs in zip(mine, sentiment.predict(mine), sentiment.predict_proba(mine), strict=True):
        print(f"  {label:>8} ({probs.max():.2f})  {text}")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    return 0


def _report(classifier: PromptClassifier, examples: list[Example]) -> None:
    started = time.perf_counter()
    evaluation = classifier.evaluate(examples)
    seconds = time.perf_counter() - started
    print(evaluation.report())
    print(f"({len(examples)} examples in {seconds:.1f} s)")
