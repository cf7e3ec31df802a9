"""The greedy answer's token statistics by one teacher-forced forward over prompt + answer.

For answers whose decoder did not record them (stores collected before it did, llama.cpp):
the prompt's token ids, then the answer text's tokens, through the model's own forward. The
tokens counted are those the decoder counts: the answer's, then the token that would have
ended it (the next argmax, where it is an end-of-sequence token or holds the newline that
ends the first line) unless the answer already fills the token budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from semdistill.teacher.decoder.jobs import TokenScores
from semdistill.teacher.decoder.sampling import token_scores
from semdistill.teacher.decoder.stopping import StopTables


@torch.inference_mode()
def forced_scores(
    model: PreTrainedModel,
    stops: StopTables,
    prompt_ids: Sequence[int],
    answer_ids: Sequence[int],
    *,
    max_new_tokens: int,
    device: torch.device,
) -> TokenScores:
    """The statistics of ``answer_ids`` after ``prompt_ids`` under ``model`` at temperature 1,
    counted as the decoder counts them (``stops`` are the decoder's tables)."""
    if not prompt_ids:
        raise ValueError("teacher-forced scores need a non-empty prompt")
    ids = torch.tensor([[*prompt_ids, *answer_ids]], device=device)
    out = model(input_ids=ids, logits_to_keep=len(answer_ids) + 1, use_cache=False)
    logits = out.logits[0].float()
    tokens = list(answer_ids)
    if len(tokens) < max_new_tokens:
        end = int(logits[-1].argmax())
        has_text = bool(stops.text[tokens].any()) if tokens else False
        line_ends = bool(stops.newline[end]) and (has_text or bool(stops.text_before_newline[end]))
        if bool(stops.eos[end]) or line_ends:
            tokens.append(end)
    if not tokens:
        return TokenScores(0.0, 0, 0.0)
    chosen = torch.tensor(tokens, device=logits.device)
    logprob, entropy = token_scores(logits[: len(tokens)], chosen)
    return TokenScores(float(logprob.sum()), len(tokens), float(entropy.mean()))
