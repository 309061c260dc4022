"""prompt_files.py — prompt files, one reader for train.py, evaluate.py, generate.py and the toy world.

A prompt file holds one prompt a line; blank lines and lines starting with # are skipped, and
"{person}" becomes the phrase that names the customized person, "a <token> person" (e.g. "a sks
person"), so one file serves any token:

    {person} surfing a big wave at sunset   ->   a sks person surfing a big wave at sunset

Exports: read_prompts, person_phrase, PromptFileError.
"""

from __future__ import annotations

from pathlib import Path


class PromptFileError(ValueError):
    """A prompt file is missing or empty; the message names it and says what to write."""


def person_phrase(token: str) -> str:
    """The words that stand for the person in every prompt: 'a sks person'."""
    return f"a {token} person"


def read_prompts(path, person: str) -> list[str]:
    """The prompts of `path` with {person} replaced by `person`; a PromptFileError if there are none."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PromptFileError(f"prompts file {str(path)!r} does not exist: give a text file with one prompt a "
                              "line, e.g. '{person} surfing a big wave'")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise PromptFileError(f"prompts file {str(path)!r} is not UTF-8 text: save it as plain text") from None
    prompts = [line.strip().replace("{person}", person) for line in lines
               if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise PromptFileError(f"prompts file {str(path)!r} holds no prompts: write one prompt a line")
    return prompts
