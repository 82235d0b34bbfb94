"""The synthetic story corpus: seeded, well formed, consistent, learnable yet not trivial."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest

from lit_llm.data import synthetic
from lit_llm.data.synthetic import (
    BOYS,
    EOT,
    GIRLS,
    corpus_unigram_entropy,
    generate_stories,
    token_unigram_entropy,
    unigram_entropy,
    write_corpus,
)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]|\n", text)


def test_same_seed_same_text_other_seed_other_text(tmp_path):
    a = write_corpus(tmp_path / "a.txt", 50, seed=3).read_bytes()
    b = write_corpus(tmp_path / "b.txt", 50, seed=3).read_bytes()
    c = write_corpus(tmp_path / "c.txt", 50, seed=4).read_bytes()
    assert a == b and a != c
    assert list(generate_stories(10, seed=3)) == list(generate_stories(50, seed=3))[:10]  # a stream


def test_layout_is_tinystories_like(tmp_path):
    text = write_corpus(tmp_path / "s.txt", 200, seed=0).read_text(encoding="utf-8")
    assert text.endswith(f"\n{EOT}\n")
    stories = text.split(f"\n{EOT}\n")[:-1]
    assert len(stories) == 200 and all(s.strip() for s in stories)
    assert len(set(stories)) == 200  # no story repeats
    assert all(EOT not in s for s in stories)
    with_dialogue = sum('"' in s for s in stories)
    assert with_dialogue == 200  # every plot has someone speak
    assert all(s.count("\n") >= 3 for s in stories)  # paragraphs
    assert text.isascii()


def test_hero_keeps_name_and_pronoun():
    """The opening names the hero; the next sentence refers to the hero with the matching pronoun."""
    opening = re.compile(
        r"^(?:Once upon a time, there (?:was|lived) an? [\w ]+ (?:named|called) (\w+)\."
        r"|There was once an? [\w ]+ named (\w+)\.|(\w+) was an? [\w ]+\.) (\w+) "
    )
    for story in generate_stories(300, seed=1):
        m = opening.match(story)
        assert m, story[:120]
        name = m.group(1) or m.group(2) or m.group(3)
        assert name in GIRLS or name in BOYS
        assert m.group(4) in (("She", "Her") if name in GIRLS else ("He", "His")), story[:160]
        assert story.count(name) >= 3  # the hero is the story's subject throughout


def test_learnable_but_not_trivial():
    """On unseen stories, a word bigram model beats the unigram model by far, yet stays far from zero."""
    train = [w for s in generate_stories(1500, seed=0) for w in [*_words(s), "<eot>"]]
    test = [w for s in generate_stories(150, seed=1) for w in [*_words(s), "<eot>"]]
    vocab = len(set(train) | set(test)) + 1
    uni, bi = Counter(train), Counter(zip(train, train[1:], strict=False))
    alpha = 0.01

    def p_uni(w):
        return (uni[w] + alpha) / (len(train) + alpha * vocab)

    h_uni = -sum(math.log2(p_uni(w)) for w in test) / len(test)
    h_bi = -sum(
        math.log2((bi[u, w] + alpha * vocab * p_uni(w)) / (uni[u] + alpha * vocab))
        for u, w in zip(test, test[1:], strict=False)
    ) / (len(test) - 1)
    assert len(set(train)) > 700  # a real lexicon, enough for a ~2000-token BPE vocabulary
    assert h_uni > 6.5
    assert h_bi < 0.6 * h_uni  # context helps a lot: learnable
    assert h_bi > 2.0  # but the next word is far from determined: not trivial


def test_unigram_entropy_matches_closed_forms():
    assert unigram_entropy([5, 5, 5, 5]) == pytest.approx(2.0)
    assert unigram_entropy(np.array([7, 0, 0])) == 0.0
    assert unigram_entropy([1, 3]) == pytest.approx(-(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)))
    assert token_unigram_entropy(np.array([0, 1, 2, 3, 0, 1, 2, 3], dtype=np.uint16)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no symbols"):
        unigram_entropy([0, 0])


def test_corpus_entropy_per_byte_and_per_token(tmp_path):
    path = write_corpus(tmp_path / "s.txt", 30, seed=0)
    data = path.read_bytes()
    expected = unigram_entropy(Counter(data).values())
    assert corpus_unigram_entropy(path) == pytest.approx(expected, rel=1e-12)

    class Chars:  # any object with ``encode_iterable`` works: here one token per character
        def encode_iterable(self, lines):
            for line in lines:
                yield from map(ord, line)

    assert corpus_unigram_entropy(path, Chars()) == pytest.approx(expected, rel=1e-12)  # ASCII: chars = bytes


def test_cli_writes_and_reports(tmp_path, capsys):
    out = tmp_path / "deep" / "c.txt"
    assert synthetic.main(["--out", str(out), "--stories", "20", "--seed", "1"]) == 0
    assert out.read_text(encoding="utf-8").count(EOT) == 20
    assert "20 stories" in capsys.readouterr().out
    assert synthetic.main(["--out", str(out), "--stories", "0"]) == 1
    assert capsys.readouterr().err.startswith("error: n_stories=0")
