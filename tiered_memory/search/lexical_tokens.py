"""Words for the lexical index: lower case, English stop words of chat removed, Snowball English stems.

Other languages: words of any alphabet are kept (the word pattern is Unicode-aware), lower-cased
and passed through the English stemmer, which leaves most non-English words unchanged or trims
an English-looking suffix (French "cafés" -> "café"); stop words are English only, so a French or
German text keeps its function words (they cost some precision, never a miss). Scripts written
without spaces (Chinese, Japanese, Korean) are cut into overlapping character pairs, so a query of
two or more of their characters finds texts that contain them. No accent folding: "café" and
"cafe" are different words.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

import Stemmer

# Letters and digits, with inner apostrophes ("o'neil", "caroline's"); "_" is not a word character
# here, so the tokens are exactly what SQLite's unicode61 tokenizer splits on again.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
# Han, Hiragana, Katakana, Hangul: no spaces between words, so character bigrams stand in for words.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")

# English function words plus what chat adds (interjections, fillers, question words): the words
# that appear in most turns and most questions and name nothing a memory is about.
STOP_WORDS = frozenset("""
a about above after again against ago all also am an and any are aren't as at be because been before
being below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't
down during each either else ever few for from further get gets got had hadn't has hasn't have haven't
having he he'd he'll he's her here here's hers herself him himself his how how's i i'd i'll i'm i've if
in into is isn't it it's its itself just let's me might more most must mustn't my myself no nor not now
of off on once only or other ought our ours ourselves out over own same shall shan't she she'd she'll
she's should shouldn't so some such than that that's the their theirs them themselves then there
there's these they they'd they'll they're they've this those through to too under until up upon us
very was wasn't we we'd we'll we're we've were weren't what what's when when's where where's which
while who who's whom why why's will with won't would wouldn't you you'd you'll you're you've your yours
yourself yourselves
yeah yes yep ok okay oh ah uh um hmm hey hi hello wow lol haha thanks thank please sure really
gonna wanna gotta
""".split())


class Tokenizer:
    """``tokenize(text) -> list[str]``: the terms a text is indexed (or queried) by."""

    name = "en-snowball-chat-v1"  # stored with a persisted index: other terms mean a rebuild

    def __init__(self, stop_words: Iterable[str] = STOP_WORDS, language: str = "english") -> None:
        self.stop_words = frozenset(stop_words)
        self.language = language
        self._stemmer = Stemmer.Stemmer(language)

    def tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFC", text).lower().replace("\u2019", "'")
        words: list[str] = []
        for word in _WORD.findall(text):
            if _CJK.search(word):
                words.extend(_cjk_pairs(word))
            elif word not in self.stop_words:
                words.append(word)
        plain = [w for w in words if not _CJK.match(w)]
        stems = iter(self._stemmer.stemWords(plain))
        # The stemmer drops a possessive "'s"; any apostrophe left ("o'neil") is removed so a term
        # is one run of letters and digits.
        return [w if _CJK.match(w) else next(stems).replace("'", "") for w in words]

    def tokenize_many(self, texts: Iterable[str]) -> list[list[str]]:
        return [self.tokenize(text) for text in texts]


def _cjk_pairs(word: str) -> list[str]:
    """A word with CJK runs: each run as overlapping character pairs (a lone character as itself),
    other letters in it ("iphone" in "iphone手机") as words of their own."""
    out: list[str] = []
    position = 0
    for run in _CJK.finditer(word):
        if run.start() > position:
            out.append(word[position:run.start()])
        chars = run.group()
        out.extend([chars] if len(chars) == 1 else [chars[i:i + 2] for i in range(len(chars) - 1)])
        position = run.end()
    if position < len(word):
        out.append(word[position:])
    return out
