"""Case code names: two words (adjective noun) from coolname's lists, drawn with `secrets`.

Words that could read as a judgement of a person, or touch appearance, ethnicity, gender,
sexuality or health, are filtered out: a code name is said aloud at events and must not
hint at anything. The database's unique constraint keeps names unique; the caller retries.
"""

from __future__ import annotations

import re
import secrets
from functools import cache

from coolname import RandomGenerator
from coolname.loader import load_config

# Adjectives and nouns we never want in a Code of Conduct case name.
_BLOCKED_TEXT = """
    sexy demonic crazy insane fat gay macho hot straight bald hairy black white brown
    yellow red naked nude drunk drunken evil wicked savage vicious psycho nasty stupid dumb
    ugly dirty sinister creepy bloody deadly killer dead toxic poisoned predatory scary
    spooky weird lame queer manly feminine virgin kinky horny lusty angry violent furious
    mad lunatic manic sick ill dying blind deaf mute crippled lame naughty cheeky shy sly
    vain jealous greedy ape monkey pig swine rat snake cow bitch weasel worm vulture slug
    leech donkey ass skunk hog sow goat chicken cuckoo parasite louse tick cockroach roach
    vermin hyena bull boobook booby tit titmouse cock cockerel pussycat beaver dick
"""
BLOCKED = frozenset(_BLOCKED_TEXT.split())
_WORD = re.compile(r"^[a-z]{2,14}$")


def _acceptable(word: str) -> bool:
    return bool(_WORD.match(word)) and word not in BLOCKED


@cache
def _generator() -> RandomGenerator:
    import os.path

    import coolname

    config = load_config(os.path.join(os.path.dirname(coolname.__file__), "data"))
    from coolname.loader import filter_config

    filter_config(config, _acceptable)
    config["all"]["__nocheck"] = True
    return RandomGenerator(config, rand=secrets.SystemRandom())


def new_code_name() -> str:
    """A fresh random code name such as ``"fiery quokka"`` (not yet checked for uniqueness)."""
    while True:
        words = _generator().generate(2)
        if len(words) == 2 and all(_acceptable(w) for w in words):
            return " ".join(words)


def slug(code_name: str) -> str:
    """``"home shelf"`` as it is written in addresses: ``"home-shelf"``."""
    return code_name.replace(" ", "-")
