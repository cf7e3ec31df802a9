"""Question sets: named loaders, user files, seeded subsets and deterministic splits."""

from semdistill.data.load import QUESTION_SETS, load_questions
from semdistill.data.mmlu import open_style_violations
from semdistill.data.question import Question, check_unique_ids
from semdistill.data.splits import SPLIT_NAMES, split_of, train_beyond
from semdistill.data.trivia import TRIVIA_LISTS

__all__ = [
    "QUESTION_SETS",
    "SPLIT_NAMES",
    "TRIVIA_LISTS",
    "Question",
    "check_unique_ids",
    "load_questions",
    "open_style_violations",
    "split_of",
    "train_beyond",
]
