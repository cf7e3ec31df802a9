"""Trivia questions from the general-knowledge YAML lists shipped with Red-DiscordBot."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from semdistill.data._packaged import packaged_path
from semdistill.data.question import Question

TRIVIA_PIP_SPEC = "red-discordbot==3.5.24"
TRIVIA_LISTS_DIR = "cogs/trivia/data/lists"

# Lists on broad, general-knowledge topics whose questions stand on their own. Left out:
# fandom lists about one game, anime, film franchise or artist (anime, boombeach,
# clashroyale, doom, dota2abilities, dota2items, finalfantasy, gameofthrones, harrypotter,
# leagueoflegends, leagueults, lotr, michaeljackson, overwatch, pokemon, prince, r6siege,
# startrek, starwars, warcraft, whosthatpokemon*), lists whose questions are images
# (cars, usflags, usmap, worldflags, worldmap) and slogans, whose questions are bare
# slogans that only make sense with the list's title.
TRIVIA_LISTS: tuple[str, ...] = (
    "general",
    "artandliterature",
    "entertainment",
    "music",
    "geography",
    "worldcapitals",
    "uscapitals",
    "usstateabbreviations",
    "elements",
    "computers",
    "greekmyth",
    "games",
    "sports",
    "worldcup",
    "hockey",
    "nba",
    "mlb",
    "disney",
    "2015",
    "2016",
)

_META_KEYS = frozenset({"AUTHOR", "DESCRIPTION", "CONFIG"})
_MEDIA = re.compile(r"https?://|www\.|\.(?:png|jpe?g|gif|webp|svg|bmp|mp3|mp4)\b", re.IGNORECASE)
_Loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)


def refers_to_media(text: str) -> bool:
    """Whether ``text`` points at an image, sound or web page (a URL or a media file name)."""
    return _MEDIA.search(text) is not None


def trivia_lists_dir() -> Path:
    """The folder of Red-DiscordBot's trivia YAML lists in the installed package."""
    return packaged_path("redbot", TRIVIA_LISTS_DIR, pip_spec=TRIVIA_PIP_SPEC)


def load_trivia(
    lists: tuple[str, ...] = TRIVIA_LISTS, *, directory: Path | None = None
) -> list[Question]:
    """The text questions of the given trivia lists, in list order then file order.

    Ids are ``trivia/<list>/<n>`` with ``n`` the question's position in its YAML file, so
    they do not move when filtering changes. Questions or answers that refer to media
    are skipped, as are questions without a non-empty answer and repeats of a question
    text already taken from an earlier list.
    """
    folder = trivia_lists_dir() if directory is None else directory
    seen: set[str] = set()
    questions: list[Question] = []
    for name in lists:
        path = folder / f"{name}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"trivia list {name!r} not found at {path}")
        # BaseLoader keeps every scalar as its source text: "1.10", "Yes" and "007" stay as
        # written instead of becoming floats, booleans or ints.
        entries = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        if not isinstance(entries, dict):
            raise ValueError(f"trivia list {path} is not a mapping of question -> answers")
        items = [(k, v) for k, v in entries.items() if k not in _META_KEYS]
        for position, (text, raw_answers) in enumerate(items):
            question = " ".join(str(text).split())
            values = raw_answers if isinstance(raw_answers, list) else [raw_answers]
            answers = tuple(dict.fromkeys(a.strip() for a in values if isinstance(a, str)))
            answers = tuple(a for a in answers if a)
            key = question.casefold()
            if not question or not answers or key in seen:
                continue
            if refers_to_media(question) or any(refers_to_media(a) for a in answers):
                continue
            seen.add(key)
            questions.append(
                Question(
                    id=f"trivia/{name}/{position}",
                    question=question,
                    answers=answers,
                    source="trivia",
                    metadata={"list": name},
                )
            )
    return questions
