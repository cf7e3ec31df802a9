"""Stop tables: a row stops exactly when the rest of its text can no longer change its answer."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from semdistill.teacher.base import clean_answer
from semdistill.teacher.decoder.stopping import StopTables

PIECES = ["Paris", "\n", " \n", "Lyon\n", "\nRome", " ", "is", "\n\n", "a\nb", "<eos>"]
EOS = len(PIECES) - 1


class PieceTokenizer:
    """Decodes token i to PIECES[i]; the end-of-sequence token decodes to nothing."""

    def __len__(self) -> int:
        return len(PIECES)

    def batch_decode(self, ids: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
        return ["".join("" if i == EOS else PIECES[i] for i in row) for row in ids]


TABLES = StopTables.build(PieceTokenizer(), [EOS], vocab_size=len(PIECES) + 2)


def _run(tokens: list[int]) -> int:
    """How many tokens a row emits before the tables stop it (all of them if never)."""
    has_text = torch.zeros(1, dtype=torch.bool)
    for count, token in enumerate(tokens, start=1):
        over, has_text = TABLES.advance(torch.tensor([token]), has_text)
        if over.item():
            return count
    return len(tokens)


def test_tables_follow_the_first_non_empty_line() -> None:
    assert _run([1, 1, 0, 1, 6]) == 4  # blank lines first, then "Paris\n"
    assert _run([3, 0]) == 1  # "Lyon\n": text before its newline
    assert _run([4, 2]) == 2  # "\nRome" starts the text, " \n" ends it
    assert _run([5, 1, 6, EOS, 0]) == 4  # blank line, "is", then end of sequence
    assert _run([8]) == 1  # "a\nb": "a" is the whole first line
    # ids past the tokenizer (padding of the logit matrix) never stop a row nor add text
    assert _run([len(PIECES), 1, len(PIECES) + 1]) == 3


@given(st.lists(st.integers(0, len(PIECES) - 1), max_size=30))
def test_stopping_early_never_changes_the_kept_answer(tokens: list[int]) -> None:
    def answer(ids: list[int]) -> str:
        kept = ids[: ids.index(EOS)] if EOS in ids else ids
        return clean_answer(PieceTokenizer().batch_decode([kept])[0])

    assert answer(tokens[: _run(tokens)]) == answer(tokens)
