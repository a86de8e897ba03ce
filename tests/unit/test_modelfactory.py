"""modelfactory's synthetic data: the graded sentiment task's labels follow its rule."""

from __future__ import annotations

from tests import modelfactory


def _score(text: str) -> int:
    """The rule restated: polar words +-1, doubled after very/really, flipped after not."""
    words = text.split()
    score = 0
    for i, word in enumerate(words):
        sign = 1 if word in modelfactory._POSITIVE else -1 if word in modelfactory._NEGATIVE else 0
        if sign and i and words[i - 1] in modelfactory._MODIFIERS:
            sign *= modelfactory._MODIFIERS[words[i - 1]]
        score += sign
    return score


def test_graded_sentiment_labels_bucket_the_order_dependent_score() -> None:
    texts, labels = modelfactory.graded_sentiment_sentences(300, seed=4, length=12)
    assert labels == [min(4, max(0, _score(t) + 2)) for t in texts]
    assert set(labels) == {0, 1, 2, 3, 4}
    assert any(" not " in f" {t} " for t in texts)
    assert all(len(t.split()) >= 13 for t in texts)  # the neutral words plus >= 1 polar word
    assert modelfactory.graded_sentiment_sentences(300, seed=4, length=12) == (texts, labels)


def test_graded_sentiment_noise_replaces_a_fraction_of_the_labels() -> None:
    clean = modelfactory.graded_sentiment_sentences(400, seed=5)
    noisy = modelfactory.graded_sentiment_sentences(400, seed=5, noise=0.5)
    changed = sum(a != b for a, b in zip(clean[1], noisy[1], strict=True))
    assert 0 < changed < 400
