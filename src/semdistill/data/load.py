"""One entry point for every question set: by name, or by the path of a user's file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from semdistill.data.hub import load_mmlu_hub, load_triviaqa_hub
from semdistill.data.mmlu import load_mmlu
from semdistill.data.question import Question
from semdistill.data.splits import seeded_subset
from semdistill.data.trivia import load_trivia
from semdistill.data.userfile import USER_FILE_SUFFIXES, load_user_file

QUESTION_SETS: dict[str, Callable[[], list[Question]]] = {
    "trivia": load_trivia,
    "mmlu": lambda: load_mmlu(open_style=True, source="mmlu"),
    "mmlu-all": lambda: load_mmlu(open_style=False, source="mmlu-all"),
    "triviaqa-hub": load_triviaqa_hub,
    "mmlu-hub": lambda: load_mmlu_hub(open_style=True, source="mmlu-hub"),
    "mmlu-all-hub": lambda: load_mmlu_hub(open_style=False, source="mmlu-all-hub"),
}


def load_questions(source: str, *, limit: int | None = None, seed: int = 0) -> list[Question]:
    """Questions of a named set or a user file, all of them or a seeded subset of ``limit``.

    Names: "trivia" (Red-DiscordBot general-knowledge lists), "mmlu" (open-style MMLU
    test subset, options kept), "mmlu-all" (every valid MMLU test row), "triviaqa-hub",
    "mmlu-hub" and "mmlu-all-hub" (the same sets from the Hugging Face Hub). Anything
    ending in .jsonl, .csv or .parquet is read as a user file.
    """
    if source in QUESTION_SETS:
        questions = QUESTION_SETS[source]()
    elif Path(source).suffix.lower() in USER_FILE_SUFFIXES:
        questions = load_user_file(source)
    else:
        raise ValueError(
            f"unknown question source {source!r}: use one of {', '.join(QUESTION_SETS)} "
            f"or a path ending in {', '.join(USER_FILE_SUFFIXES)}"
        )
    return seeded_subset(questions, limit, seed=seed)
