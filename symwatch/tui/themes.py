"""Light and dark themes: which Textual theme `--theme` / $SYMWATCH_THEME names, and `auto`.

`auto` (the default) follows the terminal's background where the terminal tells it: the
COLORFGBG variable (rxvt, Konsole, iTerm2 and others set it to "fg;bg" ANSI colour numbers).
Where it says nothing the dark theme is used, the common case. `terminal` uses the terminal's
own 16-colour palette and background (Textual's ANSI theme), for who has tuned their terminal.
"""

from __future__ import annotations

import os
from typing import Mapping

ENV_THEME = "SYMWATCH_THEME"
CHOICES = ("auto", "dark", "light", "terminal")
THEMES = {"dark": "textual-dark", "light": "textual-light", "terminal": "textual-ansi"}
DARK, LIGHT = THEMES["dark"], THEMES["light"]
# ANSI background numbers of the light colours: white (7) and the bright ones except bright
# black (8), the same reading vim uses for 'background'.
LIGHT_BACKGROUNDS = {7, 9, 10, 11, 12, 13, 14, 15}


class ThemeError(ValueError):
    """An unknown theme name (from the command line or the environment)."""


def background_from_colorfgbg(value: str | None) -> str | None:
    """'light', 'dark' or None (unset or unreadable) from a COLORFGBG value such as '15;0'
    or '0;default;15' (the background is the last field)."""
    if not value:
        return None
    last = value.split(";")[-1].strip()
    if not last.isdigit():
        return None
    return "light" if int(last) in LIGHT_BACKGROUNDS else "dark"


def resolve_theme(choice: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The Textual theme name for `choice` (a CHOICES word, or None: $SYMWATCH_THEME, else
    auto). Raises ThemeError for anything else, saying what is accepted."""
    env = os.environ if environ is None else environ
    source = "--theme"
    if choice is None:
        choice, source = env.get(ENV_THEME) or "auto", f"${ENV_THEME}"
    word = choice.strip().lower()
    if word not in CHOICES:
        raise ThemeError(f"{source}: unknown theme {choice!r}; use one of {', '.join(CHOICES)}")
    if word == "auto":
        word = background_from_colorfgbg(env.get("COLORFGBG")) or "dark"
    return THEMES[word]


def toggled(is_dark: bool) -> str:
    """The theme the light/dark toggle (`t`) switches to from a dark or a light one."""
    return LIGHT if is_dark else DARK
