"""Tests for semantic entropy: clustering, entropy values and the three equivalence judges."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from semdistill.semantics.semantic_entropy import (
    LLMEquivalence,
    NLIEquivalence,
    RuleEquivalence,
    cluster_answers,
    llm_equivalence_prompt,
    normalize_answer,
    parse_yes_no,
    semantic_entropies,
    semantic_entropy,
)


class DictJudge:
    """Fake judge: equivalent iff the unordered pair is listed (or the strings are equal)."""

    name = "dict-fake"

    def __init__(self, same: set[frozenset[str]]) -> None:
        self.same = same
        self.calls: list[list[tuple[str, str]]] = []

    def equivalent(
        self, pairs: Sequence[tuple[str, str]], *, question: str | None = None
    ) -> np.ndarray:
        self.calls.append(list(pairs))
        return np.array([a == b or frozenset((a, b)) in self.same for a, b in pairs], dtype=bool)


def reference_clustering(answers: list[str], same: set[frozenset[str]]) -> list[int]:
    """One answer at a time: join the first cluster whose first member is equivalent."""
    representatives: list[str] = []
    ids = []
    for answer in answers:
        for cid, rep in enumerate(representatives):
            if answer == rep or frozenset((answer, rep)) in same:
                ids.append(cid)
                break
        else:
            representatives.append(answer)
            ids.append(len(representatives) - 1)
    return ids


def test_normalize_answer() -> None:
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("An apple, a day.") == "apple day"
    assert normalize_answer("«Paris»") == "paris"
    assert normalize_answer("Theory") == "theory"


def test_semantic_entropy_values() -> None:
    assert semantic_entropy([0, 0, 0, 0]) == 0.0
    assert semantic_entropy([0, 1, 2, 3, 4]) == pytest.approx(math.log(5))
    assert semantic_entropy([0, 0, 1, 1]) == pytest.approx(math.log(2))
    p = np.array([3, 1, 1]) / 5
    assert semantic_entropy([0, 0, 0, 1, 2]) == pytest.approx(-np.sum(p * np.log(p)))
    with pytest.raises(ValueError, match="cluster_ids must be a non-empty"):
        semantic_entropy([])
    with pytest.raises(ValueError, match="cluster_ids must be integers"):
        semantic_entropy([0.5, 1.0])


def test_rule_judge_known_entropies() -> None:
    judge = RuleEquivalence()
    sets = [
        ["Paris", "paris.", "The Paris", "PARIS!"],
        ["Paris", "London", "Rome", "Berlin"],
        ["Paris", "London", "the paris", "London."],
    ]
    expected = [0.0, math.log(4), math.log(2)]
    np.testing.assert_allclose(semantic_entropies(sets, judge), expected, atol=1e-12)
    assert cluster_answers(sets[2], judge) == [0, 1, 0, 1]
    assert judge.name == "rule-v1(string)"


def test_greedy_clustering_first_cluster_wins_and_batches() -> None:
    # A~C and B~C but not A~B: C joins A's cluster (the first one).
    judge = DictJudge({frozenset("AC"), frozenset("BC")})
    assert cluster_answers(["A", "B", "C", "A", "B"], judge) == [0, 1, 0, 0, 1]
    # One batched call per cluster; duplicates never judged; no pair judged twice.
    assert judge.calls == [[("A", "B"), ("A", "C")]]
    judged = [frozenset(p) for call in judge.calls for p in call]
    assert len(judged) == len(set(judged))


def test_greedy_clustering_matches_reference_on_random_relations() -> None:
    rng = np.random.default_rng(11)
    words = list("abcdef")
    for _ in range(200):
        same = {frozenset(p) for p in itertools.combinations(words, 2) if rng.random() < 0.3}
        answers = list(rng.choice(words, size=8))
        judge = DictJudge(same)
        assert cluster_answers(answers, judge) == reference_clustering(answers, same)
        distinct = len(set(answers))
        assert sum(len(c) for c in judge.calls) <= distinct * (distinct - 1) // 2


def test_rule_judge_with_embeddings_callable_and_precomputed() -> None:
    table = {
        "Paris": [1.0, 0.0],
        "City of Paris": [0.95, 0.1],
        "London": [0.0, 1.0],
        "UK capital": [0.1, 0.99],
        "nothing": [0.0, 0.0],
    }

    def embed(texts: list[str]) -> np.ndarray:
        return np.array([table[t] for t in texts])

    answers = ["Paris", "City of Paris", "London", "UK capital", "nothing", "paris"]
    judge = RuleEquivalence(embed, threshold=0.9)
    assert judge.name == "rule-v1(string|cosine>=0.9)"
    assert cluster_answers(answers, judge) == [0, 0, 1, 1, 2, 0]
    precomputed = np.array([table.get(a, [1.0, 0.0]) for a in answers])
    assert cluster_answers(answers, RuleEquivalence(), embeddings=precomputed) == [0, 0, 1, 1, 2, 0]
    cosine = float(np.dot(table["Paris"], table["City of Paris"]) / np.linalg.norm([0.95, 0.1]))
    strict = RuleEquivalence(embed, threshold=cosine + 1e-9)
    assert not strict.equivalent([("Paris", "City of Paris")])[0]
    stacked = np.stack([precomputed, precomputed])
    ses = semantic_entropies([answers, answers], RuleEquivalence(), embeddings=stacked)
    p = np.array([3, 2, 1]) / 6
    np.testing.assert_allclose(ses, -np.sum(p * np.log(p)))


def test_cluster_answers_bad_input() -> None:
    judge = RuleEquivalence()
    with pytest.raises(ValueError, match="answers is empty"):
        cluster_answers([], judge)
    with pytest.raises(ValueError, match="only strings"):
        cluster_answers(["a", 3], judge)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="only used by RuleEquivalence"):
        cluster_answers(["a", "b"], DictJudge(set()), embeddings=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="embeddings must have shape"):
        cluster_answers(["a", "b"], judge, embeddings=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="threshold"):
        RuleEquivalence(threshold=2.0)
    with pytest.raises(ValueError, match="questions has 1 entries"):
        semantic_entropies([["a"], ["b"]], judge, questions=["q"])
    with pytest.raises(ValueError, match=r"answer_sets\[1\] is empty"):
        semantic_entropies([["a"], []], judge)
    with pytest.raises(ValueError, match="answer_sets is empty"):
        semantic_entropies([], judge)

    class BrokenJudge(DictJudge):
        def equivalent(self, pairs, *, question=None):  # type: ignore[override]
            return np.ones(len(pairs) + 1, dtype=bool)

    with pytest.raises(ValueError, match="returned shape"):
        cluster_answers(["a", "b"], BrokenJudge(set()))
    with pytest.raises(ValueError, match="embed must return shape"):
        RuleEquivalence(lambda texts: np.zeros((1, 2))).equivalent([("a", "b")])


class FakeLLM:
    """Says yes iff (A, B) is in ``yes`` (order matters); records every prompt."""

    def __init__(self, yes: set[tuple[str, str]], garbled: set[tuple[str, str]]) -> None:
        self.yes = yes
        self.garbled = garbled
        self.prompts: list[str] = []

    def greedy(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
        self.prompts.extend(prompts)
        replies = []
        for prompt in prompts:
            a = prompt.split("Answer A: ")[1].split("\n")[0]
            b = prompt.split("Answer B: ")[1].split("\n")[0]
            if (a, b) in self.garbled:
                replies.append("I cannot say.")
            else:
                replies.append(" Yes." if (a, b) in self.yes else "No, they differ")
        return replies


def test_parse_yes_no() -> None:
    assert parse_yes_no(" Yes.") is True
    assert parse_yes_no("no") is False
    assert parse_yes_no("NO, yes") is False
    assert parse_yes_no("yesterday") is None
    assert parse_yes_no("") is None


def test_llm_judge_both_directions_cache_and_unparsed() -> None:
    llm = FakeLLM(
        yes={("Paris", "paris"), ("paris", "Paris"), ("Rome", "Roma")}, garbled={("x", "y")}
    )
    judge = LLMEquivalence(llm)
    assert judge.name == "llm-same-meaning-v1"
    pairs = [("Paris", "paris"), ("Rome", "Roma"), ("x", "y")]
    np.testing.assert_array_equal(
        judge.equivalent(pairs, question="Capital?"), [True, False, False]
    )
    assert len(llm.prompts) == 6
    assert judge.n_unparsed == 1
    assert llm.prompts[0] == llm_equivalence_prompt("Paris", "paris", "Capital?")
    assert 'question "Capital?"' in llm.prompts[0]
    judge.equivalent([("paris", "Paris")], question="Capital?")
    assert len(llm.prompts) == 6  # both directions cached
    judge.equivalent([("paris", "Paris")], question="Other?")
    assert len(llm.prompts) == 8  # cache is per question
    ids = cluster_answers(["Paris", "paris", "Rome", "Roma"], judge, question="Capital?")
    assert ids == [0, 0, 1, 2]


def test_llm_judge_bad_replies() -> None:
    class Short:
        def greedy(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
            return ["yes"]

    with pytest.raises(ValueError, match="returned 1 replies for 2 prompts"):
        LLMEquivalence(Short()).equivalent([("a", "b")])
    with pytest.raises(ValueError, match="max_new_tokens"):
        LLMEquivalence(Short(), max_new_tokens=0)
    with pytest.raises(ValueError, match="pairs must hold"):
        LLMEquivalence(Short()).equivalent([("a",)])  # type: ignore[list-item]


WORDS = ["paris", "london", "rome", "is", "the", "capital", "city", "of", "france", "big"]


def _random_texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, 6))) for _ in range(n)]


def _save_tiny_nli(
    directory: Path, id2label: dict[int, str], calibration_pairs: list[tuple[str, str]]
) -> None:
    """Random tiny BERT MNLI-style classifier plus an offline WordLevel tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    tokenizer.save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # large weights and centred logits: verdicts vary with the input
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 1.0)
        batch = tokenizer(
            [a for a, _ in calibration_pairs],
            [b for _, b in calibration_pairs],
            padding=True,
            return_tensors="pt",
        )
        model.classifier.bias -= model(**batch).logits.mean(dim=0)
        model.classifier.bias[-1] += 1.0  # ENTAILMENT (last) wins about half the time
    model.save_pretrained(directory)


def test_nli_judge_plumbing(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}
    texts = _random_texts(8, seed=0)
    pairs = list(itertools.combinations(texts, 2))
    _save_tiny_nli(tmp_path, labels, list(itertools.permutations(_random_texts(12, seed=1), 2)))
    judge = NLIEquivalence(tmp_path, batch_size=5)
    assert judge.entailment_index == 2
    assert judge.name == f"nli({tmp_path})"

    verdicts = judge.equivalent(pairs)
    assert verdicts.shape == (len(pairs),)
    assert verdicts.dtype == bool

    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()

    def direct(premise: str, hypothesis: str) -> bool:
        with torch.no_grad():
            logits = model(**tokenizer(premise, hypothesis, return_tensors="pt")).logits
        return int(logits.argmax(-1)) == 2

    forward = np.array([direct(a, b) for a, b in pairs])
    backward = np.array([direct(b, a) for a, b in pairs])
    np.testing.assert_array_equal(verdicts, forward & backward)
    assert verdicts.any()
    assert (~verdicts).any()
    assert (forward != backward).any()  # the symmetry requirement matters on this data
    np.testing.assert_array_equal(judge.equivalent([(b, a) for a, b in pairs]), verdicts)
    assert judge.equivalent([]).shape == (0,)
    ids = cluster_answers(texts, judge)
    assert ids[0] == 0
    assert semantic_entropy(ids) >= 0.0


def test_nli_judge_requires_entailment_label(tmp_path: Path) -> None:
    _save_tiny_nli(tmp_path, {0: "LABEL_0", 1: "LABEL_1"}, [("paris", "rome")])
    with pytest.raises(ValueError, match="exactly one 'entailment' label"):
        NLIEquivalence(tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        NLIEquivalence(tmp_path, batch_size=0)
