"""The greedy answer's token statistics: recorded by the decoder, teacher-forced for old
stores, stored, and refused in one line where a store has none.

Tiny random-weight models (``tiny_decoders``) on the lean (llama) and the generic (gemma3)
forward: the decoder's log-probabilities and entropies must equal the model's own forward
over prompt + the greedy tokens, and the teacher-forced route must count and score the same
tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import tiny_decoders
from semdistill.collect.greedy import add_greedy_scores
from semdistill.store import MANIFEST_NAME, GreedyScores, Store
from semdistill.store.columns import GREEDY_COLUMNS
from semdistill.teacher import load_teacher
from semdistill.teacher.answer_sets import answer_sets
from semdistill.teacher.base import AnswerSet
from semdistill.teacher.decoder.engine import Engine
from semdistill.teacher.decoder.jobs import Completion, Job, RowSpec, TokenScores
from semdistill.teacher.decoder.sampling import token_scores
from semdistill.teacher.forced import forced_scores
from semdistill.teacher.hf import HFTeacher
from test_collect import QUESTIONS, FakeTeacher, fake_config, run_fake
from test_store import make_config, make_rows

PROMPTS = [
    "What is the capital of France?",
    "Who wrote the play Hamlet?",
    "Which planet is known as the Red Planet?",
    "In which year did the Berlin Wall fall?",
]
BUDGET = 12
CPU = torch.device("cpu")
# (sum of log-probabilities, mean entropy) per answer; bfloat16 logits of two correct
# forwards differ by a relative RMS of a few percent (docs/engine.md, "Tolerances")
TOLERANCE = {"float32": (1e-3, 1e-4), "bfloat16": (0.05 * BUDGET, 0.02)}


class Recording(Engine):
    """The engine, also keeping every token its scored rows emit, by prompt."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.ids: dict[tuple[int, ...], list[int]] = {}

    def _advance(self, tokens: torch.Tensor, first: int) -> None:
        for row, token in zip(self._rows[first:], tokens.tolist(), strict=True):
            if row.spec.score:
                self.ids.setdefault(tuple(row.job.prompt_ids), []).append(token)
        super()._advance(tokens, first)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("greedy")
    tokenizer = tiny_decoders.smollm2_tokenizer()
    return {name: tiny_decoders.build(name, root, tokenizer) for name in ("qwen2", "gemma3-text")}


def decode(teacher: HFTeacher, eos: list[int]) -> tuple[Recording, list[list[int]], dict]:
    """The answer sets of PROMPTS (greedy + 2 samples) on an engine ending rows at ``eos``."""
    engine = Recording(teacher.prefiller, teacher.tokenizer, eos, max_rows=64)
    ids = [teacher.prompt_token_ids(teacher.format_prompt(q)) for q in PROMPTS]
    sets = dict(
        answer_sets(
            engine,
            ids,
            n=2,
            greedy=True,
            temperature=1.0,
            seeds=range(len(ids)),
            max_new_tokens=BUDGET,
            layers=[0],
        )
    )
    return engine, ids, sets


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["qwen2", "gemma3-text"])
def test_decoder_scores_equal_the_models_own_forward_and_the_teacher_forced_route(
    name: str, dtype: str, folders: dict[str, Path]
) -> None:
    teacher = load_teacher(str(folders[name]), dtype=dtype, device="cpu")
    assert isinstance(teacher, HFTeacher)
    # a token the first greedy answer emits ends rows here, so some rows end at a stop token
    probe, probe_ids, _ = decode(teacher, teacher.eos_ids)
    engine, ids, sets = decode(teacher, [*teacher.eos_ids, probe.ids[tuple(probe_ids[0])][2]])
    reference = tiny_decoders.reference(folders[name], dtype)
    logprob_tolerance, entropy_tolerance = TOLERANCE[dtype]
    ended_early = 0
    for i, prompt in enumerate(ids):
        tokens = engine.ids[tuple(prompt)]
        recorded = sets[i].greedy_scores
        assert recorded is not None and recorded.tokens == len(tokens)  # the end token counts
        with torch.inference_mode():
            logits = reference(input_ids=torch.tensor([prompt + tokens])).logits[0]
        logprob, entropy = token_scores(logits[len(prompt) - 1 : -1], torch.tensor(tokens))
        assert abs(recorded.logprob - float(logprob.sum())) <= logprob_tolerance
        assert abs(recorded.entropy - float(entropy.mean())) <= entropy_tolerance
        # teacher-forced over the answer's tokens (the end token found by the forward itself)
        ended_early += len(tokens) < BUDGET
        answer = tokens[:-1] if len(tokens) < BUDGET else tokens
        forced = forced_scores(
            teacher.model, engine.stops, prompt, answer, max_new_tokens=BUDGET, device=CPU
        )
        assert forced.tokens == recorded.tokens
        assert abs(forced.logprob - recorded.logprob) <= logprob_tolerance
        assert abs(forced.entropy - recorded.entropy) <= entropy_tolerance
    assert ended_early  # the end-token rule was exercised


def test_teacher_forced_scores_of_stored_text_match_where_the_text_re_encodes(
    folders: dict[str, Path],
) -> None:
    teacher = load_teacher(str(folders["qwen2"]), dtype="float32", device="cpu")
    assert isinstance(teacher, HFTeacher)
    engine, ids, sets = decode(teacher, teacher.eos_ids)
    prompts = [teacher.format_prompt(q) for q in PROMPTS]
    forced = teacher.greedy_scores(
        prompts, [sets[i].greedy for i in range(len(prompts))], max_new_tokens=BUDGET
    )
    matched = 0
    for i, prompt in enumerate(ids):
        tokens = engine.ids[tuple(prompt)]
        text = teacher.tokenizer(sets[i].greedy, add_special_tokens=False).input_ids
        if text != tokens[: len(text)] or len(tokens) - len(text) > 1:
            continue  # a leading space or a cut line the stored text no longer shows
        matched += 1
        recorded = sets[i].greedy_scores
        assert recorded is not None and forced[i].tokens == recorded.tokens
        assert forced[i].logprob == pytest.approx(recorded.logprob, abs=1e-3)
        assert forced[i].entropy == pytest.approx(recorded.entropy, abs=1e-4)
    assert matched


class _Rows(Job):
    """One prompt decoded with the given rows; the completions kept."""

    def __init__(self, prompt: list[int], specs: list[RowSpec]) -> None:
        super().__init__(prompt, [0], width=len(specs))
        self.specs = specs
        self.done: dict[int, Completion] = {}

    def prefilled(self, states: np.ndarray) -> list[RowSpec]:
        return self.specs

    def finished(self, row: int, completion: Completion) -> None:
        self.done[row] = completion


def test_scoring_leaves_sampled_answers_unchanged(folders: dict[str, Path]) -> None:
    teacher = load_teacher(str(folders["qwen2"]), dtype="float32", device="cpu")
    assert isinstance(teacher, HFTeacher)
    prompt = teacher.prompt_token_ids(teacher.format_prompt(PROMPTS[0]))
    engine = teacher.new_engine(max_rows=8)

    def run(score: bool) -> list[Completion]:
        specs = [RowSpec(BUDGET)] + [
            RowSpec(BUDGET, temperature=1.0, seed=(3, j), score=score) for j in range(1, 5)
        ]
        job = _Rows(prompt, specs)
        engine.submit(job)
        while engine.busy:
            engine.step()
        return [job.done[i] for i in range(len(specs))]

    plain, scored = run(False), run(True)
    assert [c.text for c in plain] == [c.text for c in scored]
    assert all(c.scores is None for c in plain) and all(c.scores for c in scored[1:])
    assert scored[0].scores is None  # only rows that ask are scored


def _scored_rows(ids: list[str], route: str, seed: int = 0) -> GreedyScores:
    rng = np.random.default_rng(seed)
    n = len(ids)
    return GreedyScores(-rng.random(n) * 5, rng.integers(1, 9, n), rng.random(n), route)


def test_store_round_trip_keeps_greedy_scores_and_their_route(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s", make_config())
    rows = make_rows(["a", "b", "c"], with_options=False)
    rows.greedy = _scored_rows(["a", "b", "c"], "decoder")
    store.append(rows)
    loaded = Store.open(store.path).load()
    assert loaded.greedy is not None and loaded.greedy.route == "decoder"
    np.testing.assert_array_equal(loaded.greedy.logprob, rows.greedy.logprob)
    np.testing.assert_array_equal(loaded.greedy.tokens, rows.greedy.tokens)
    np.testing.assert_array_equal(loaded.greedy.entropy, rows.greedy.entropy)
    assert loaded.subset([2, 0]).greedy.tokens.tolist() == rows.greedy.tokens[[2, 0]].tolist()
    assert Store.open(store.path).greedy_route == "decoder"
    store.append(make_rows(["d"], with_options=False))  # a teacher that gave none
    reopened = Store.open(store.path)
    assert reopened.greedy_route is None and reopened.unscored_shards() == [1]
    assert reopened.load().greedy is None and reopened.load(split="train").greedy is None


def as_format_1(store: Store) -> None:
    """Rewrite ``store`` as the format before the greedy columns wrote it."""
    for shard in (store.path / "shards").glob("*.parquet"):
        table = pq.read_table(shard)
        pq.write_table(table.drop_columns([name for name, _ in GREEDY_COLUMNS]), shard)
    manifest = json.loads(store.manifest_path.read_text())
    manifest["format_version"] = 1
    manifest["shards"] = [{"file": s["file"], "rows": s["rows"]} for s in manifest["shards"]]
    store.manifest_path.write_text(json.dumps(manifest))


class ScoringTeacher(FakeTeacher):
    """The fake teacher, recording greedy scores and scoring given answers."""

    def answer_sets(self, prompts, *, n, temperature, seeds, max_new_tokens):
        for i, answers in super().answer_sets(
            prompts, n=n, temperature=temperature, seeds=seeds, max_new_tokens=max_new_tokens
        ):
            scores = TokenScores(-float(len(answers.greedy)), len(answers.greedy), 0.5)
            yield i, AnswerSet(answers.hidden, answers.greedy, answers.samples, scores)

    def greedy_scores(self, prompts, answers, *, max_new_tokens):
        return [TokenScores(-float(len(a)), len(a), 0.5) for a in answers]


def test_an_old_store_loads_without_scores_refuses_in_one_line_and_resume_adds_them(
    tmp_path: Path,
) -> None:
    store = Store.create(tmp_path / "old", fake_config())
    run_fake(store, QUESTIONS[:3], batch_size=2)
    as_format_1(store)
    old = Store.open(store.path)
    rows = old.load()
    assert rows.greedy is None and old.unscored_shards() == [0, 1]
    with pytest.raises(ValueError) as refused:
        rows.require_greedy(str(old.path), old.collect_command())
    message = str(refused.value)
    assert "\n" not in message and str(old.path) in message
    assert "semdistill collect --model" in message and f"--out {old.path}" in message
    # resuming with the same settings collects the rest and scores the old rows
    stats = run_fake(old, QUESTIONS, batch_size=2, teacher=ScoringTeacher())
    assert (stats.n_written, stats.n_scored) == (2, 3)
    upgraded = Store.open(store.path)
    manifest = json.loads((store.path / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == 2
    assert [s["greedy"] for s in manifest["shards"]] == ["teacher-forced"] * 2 + ["decoder"]
    scores = upgraded.load().require_greedy(str(store.path), upgraded.collect_command())
    assert scores.route == "mixed"
    assert scores.tokens.tolist() == [len(a) for a in upgraded.load().default_answer]
    assert add_greedy_scores(upgraded, ScoringTeacher()) == 0  # nothing left to score


def test_add_greedy_scores_refuses_another_model_or_a_teacher_that_cannot_score(
    tmp_path: Path,
) -> None:
    store = Store.create(tmp_path / "s", fake_config())
    run_fake(store, QUESTIONS[:2], batch_size=2)
    with pytest.raises(ValueError, match="cannot score given answers"):
        add_greedy_scores(store, FakeTeacher())
    other = ScoringTeacher()
    other.dtype = "bfloat16"
    with pytest.raises(ValueError, match=r"was collected with .* in float32"):
        add_greedy_scores(store, other)
