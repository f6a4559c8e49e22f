"""Lexical guards: checks every semantic candidate must pass before any verifier sees it.

A verifier (trained or not) is a score; some differences between two questions make the cached answer
wrong whatever the score says. :func:`guard` names the first one found, and :class:`AnswerCache` never
serves a candidate that fails one, with the default verifier or any trained one:

* ``numbers``: the numbers differ, or come in another order (digits and number words: "5" = "five";
  "1,000" = "1000"; "1/2/2020" vs "2/1/2020");
* ``units``: both questions name units of measure or currencies and they differ ("5 km" vs "5 miles",
  "$" vs "€"); time units count when they follow a number ("5 years" vs "5 months");
* ``dates``: month names or weekdays differ, or both say today/tomorrow/yesterday/tonight and differently;
* ``negation``: one question has an odd number of negations and the other an even one ("is X safe" vs
  "is X not safe"; "n't" counts as "not");
* ``entities``: a capitalised word (not opening a sentence) of one question is missing from the other,
  case-insensitively, accents and plurals aside, unless the other has a word with its first 5 letters
  (Google, Googling) or it is an acronym of the other's capitalised words (US, United States): "capital of
  France" vs "capital of Spain";
* ``roles``: the names both share come in another order ("Nadal beat Federer" vs "Federer beat Nadal"), or
  the words on the two sides of "to", "into", "from", "than", "vs" changed sides ("convert Celsius to
  Fahrenheit" vs "convert Fahrenheit to Celsius").

What no guard can see (a different lower-case noun with the same template, a subtle rewording) is left to
the verifier and the error bound.

>>> guard("Is aspirin safe?", "Is aspirin not safe?"), guard("Capital of France?", "Capital of Spain?")
('negation', 'entities')
>>> guard("How do I learn Python fast?", "how can I learn python quickly") is None
True
"""

from __future__ import annotations

import itertools
import re
import unicodedata


def _split(words: str) -> list[str]:
    return words.split()


_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)?|[$€£¥₹%°]", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        _split("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty")
    )
    if w != "one"  # "one" is more often a pronoun ("how can one ...") than a number
} | {"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80",
     "ninety": "90", "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
     "dozen": "12"}  # fmt: skip

_UNIT_GROUPS = {
    "km": "km kms kilometer kilometers kilometre kilometres",
    "mile": "mile miles mi",
    "m": "meter meters metre metres",
    "cm": "cm centimeter centimeters centimetre centimetres",
    "mm": "mm millimeter millimeters millimetre millimetres",
    "inch": "inch inches",
    "foot": "foot feet ft",
    "yard": "yard yards",
    "kg": "kg kgs kilogram kilograms kilo kilos",
    "g": "gram grams",
    "lb": "lb lbs pound pounds £ gbp sterling",
    "oz": "oz ounce ounces",
    "ton": "ton tons tonne tonnes",
    "l": "liter liters litre litres",
    "ml": "ml milliliter milliliters millilitre millilitres",
    "gallon": "gallon gallons",
    "celsius": "celsius centigrade",
    "fahrenheit": "fahrenheit",
    "kelvin": "kelvin",
    "usd": "dollar dollars usd $",
    "eur": "euro euros eur €",
    "inr": "rupee rupees inr rs ₹",
    "yen": "yen jpy ¥",
    "percent": "percent percentage %",
    "gb": "gb gigabyte gigabytes",
    "mb": "mb megabyte megabytes",
    "tb": "tb terabyte terabytes",
    "kb": "kb kilobyte kilobytes",
    "ghz": "ghz",
    "mhz": "mhz",
    "mph": "mph",
    "kmh": "kmh kph",
    "watt": "watt watts kw kilowatt kilowatts kwh",
    "volt": "volt volts",
    "calorie": "calorie calories kcal cal",
}
_UNITS = {word: unit for unit, words in _UNIT_GROUPS.items() for word in words.split()}
_TIME_UNITS = {
    word: unit
    for unit, words in {
        "second": "second seconds sec secs", "minute": "minute minutes mins", "hour": "hour hours hrs",
        "day": "day days", "week": "week weeks", "month": "month months", "year": "year years yrs",
        "decade": "decade decades", "century": "century centuries",
    }.items()
    for word in words.split()
}  # fmt: skip
_MONTHS = {
    m[:3]: m for m in _split("january february march april may june july august september october november december")
}
_DATE_WORDS = {
    **{m: m for m in _MONTHS.values()},
    **{short: full for short, full in _MONTHS.items() if short != "may"},
    "sept": "september",
    **{d: d for d in _split("monday tuesday wednesday thursday friday saturday sunday")},
    **{d[:3]: d for d in _split("monday tuesday wednesday thursday friday saturday sunday")},
    **{d: d for d in _split("today tomorrow yesterday tonight")},
}
_RELATIVE = frozenset(_split("today tomorrow yesterday tonight"))
_NEGATIONS = frozenset(_split("not no never nor none nobody nothing nowhere neither without cannot"))
_ROLE_MARKERS = ("to", "into", "from", "than", "vs", "versus")
_STOP = frozenset(
    _split(
        "a an the is are was were be been do does did i you he she it we they my your of in on at for and or what "
        "which who whom how why when where can could would should will shall may might must this that these those "
        "there their his her its our me us them with by as about so if get"
    )
)
_NOT_NAMES = frozenset({"i", "i'm", "i've", "i'd", "i'll", "ok", "okay"})


def _tokens(text: str) -> tuple[list[str], set[int]]:
    """Tokens with their case kept (NFKC; "n't" split off as "not"; digit groups joined: 1,000 -> 1000),
    and the positions of those that open a sentence."""
    text = unicodedata.normalize("NFKD", text).replace("\u2019", "'")
    text = unicodedata.normalize("NFKC", "".join(c for c in text if not unicodedata.combining(c)))  # Pokémon
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = re.sub(r"\b(\d+)\s?[kK]\b", lambda m: m.group(1) + "000", text)  # 60k -> 60000
    text = re.sub(r"(?i)can't\b", "can not", text)
    text = re.sub(r"(?i)won't\b", "will not", text)
    text = re.sub(r"(?i)n't\b", " not", text)
    text = re.sub(r"(?<=\d)(?=[^\W\d_])", " ", text)  # "5km" -> "5 km"
    tokens: list[str] = []
    starts: set[int] = set()
    for match in _TOKEN.finditer(text):
        before = text[: match.start()].rstrip()
        if not before or before[-1] in ".?!:;\"'(\u201c[-*":
            starts.add(len(tokens))
        tokens.append(match.group())
    return tokens, starts


def _numbers(words: list[str]) -> list[str]:
    out = []
    for w in words:
        if _NUMBER.fullmatch(w):
            out.append(str(float(w)) if "." in w else str(int(w)))
        elif w in _NUMBER_WORDS:
            value = _NUMBER_WORDS[w]
            out.append(str(float(value)) if "." in value else value)
        else:
            out.extend(str(int(d)) for d in re.findall(r"\d+", w))  # 1st, 3rd, mp3
    return out


def _units(words: list[str]) -> set[str]:
    found = {_UNITS[w] for w in words if w in _UNITS}
    for before, w in itertools.pairwise(words):
        if w in _TIME_UNITS and (_NUMBER.fullmatch(before) or before in _NUMBER_WORDS):
            found.add(_TIME_UNITS[w])
    return found


def _dates(tokens: list[str], words: list[str]) -> set[str]:
    found = set()
    for i, (t, w) in enumerate(zip(tokens, words, strict=True)):
        if w == "may":  # the month only when capitalised mid-question or next to a number
            near_number = any(_NUMBER.fullmatch(x) for x in words[max(0, i - 1) : i + 2])
            if not ((i > 0 and t[:1].isupper()) or near_number):
                continue
        if w in _DATE_WORDS:
            found.add(_DATE_WORDS[w])
    return found


def _names(tokens: list[str], starts: set[int]) -> list[str]:
    """Capitalised words that do not open a sentence and are no stop word (case-folded, possessive
    dropped), in order of first appearance."""
    out: list[str] = []
    for i, t in enumerate(tokens):
        folded = _base(t.casefold())
        name = i not in starts and t[:1].isupper() and folded not in _NOT_NAMES and folded not in _STOP
        if name and folded not in out:
            out.append(folded)
    return out


def _named_in(name: str, words: list[str], tokens: list[str]) -> bool:
    """Whether ``name`` appears among ``words``: the same base form, the same first 5 letters (Google,
    Googling), or an acronym of consecutive capitalised tokens (US: United States; USA: United States of
    America)."""
    if name in words or (len(name) >= 5 and any(w[:5] == name[:5] and len(w) >= 5 for w in words)):
        return True
    if 2 <= len(name) <= 5:
        initials = "".join(t[0] for t in tokens if t[:1].isupper()).casefold()
        return name in initials
    return False


def _base(word: str) -> str:
    """``word`` without a possessive or plural ``s`` ("WhatsApp's" and "whatsapps" -> "whatsapp")."""
    word = re.sub(r"'s$", "", word)
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _sides(words: list[str], marker: str) -> tuple[set[str], set[str]] | None:
    """Content words before and after the first ``marker`` (up to the neighbouring markers)."""
    if marker not in words:
        return None
    at = words.index(marker)
    start = max((i + 1 for i, w in enumerate(words[:at]) if w in _ROLE_MARKERS), default=0)
    stop = next((at + 1 + i for i, w in enumerate(words[at + 1 :]) if w in _ROLE_MARKERS), len(words))
    keep = _STOP | _NEGATIONS | frozenset(_ROLE_MARKERS)
    return {w for w in words[start:at] if w not in keep}, {w for w in words[at + 1 : stop] if w not in keep}


def guard(a: str, b: str) -> str | None:
    """The first difference between questions ``a`` and ``b`` that makes one's answer wrong for the
    other (``"numbers"``, ``"units"``, ``"dates"``, ``"negation"``, ``"entities"``, ``"roles"``), or ``None``.

    >>> guard("Distance of 5 km?", "Distance of 5 miles?"), guard("Born in 1990?", "Born in 1991?")
    ('units', 'numbers')
    >>> guard("How do I convert Celsius to Fahrenheit?", "How do I convert Fahrenheit to Celsius?")
    'roles'
    """
    (ta, starts_a), (tb, starts_b) = _tokens(a), _tokens(b)
    wa, wb = [t.casefold() for t in ta], [t.casefold() for t in tb]
    if _numbers(wa) != _numbers(wb):
        return "numbers"
    units_a, units_b = _units(wa), _units(wb)
    if units_a and units_b and units_a != units_b:  # "5 km" vs "5 miles"; "in Rs" vs nothing passes
        return "units"
    dates_a, dates_b = _dates(ta, wa), _dates(tb, wb)
    relative_a, relative_b = dates_a & _RELATIVE, dates_b & _RELATIVE
    if dates_a - _RELATIVE != dates_b - _RELATIVE or (relative_a and relative_b and relative_a != relative_b):
        return "dates"
    if sum(w in _NEGATIONS for w in wa) % 2 != sum(w in _NEGATIONS for w in wb) % 2:
        return "negation"
    names_a, names_b = _names(ta, starts_a), _names(tb, starts_b)
    base_a, base_b = [_base(w) for w in wa], [_base(w) for w in wb]
    if not all(_named_in(n, base_b, tb) for n in names_a) or not all(_named_in(n, base_a, ta) for n in names_b):
        return "entities"
    shared = set(names_a) | set(names_b)
    order_a = [w for w in dict.fromkeys(base_a) if w in shared]
    order_b = [w for w in dict.fromkeys(base_b) if w in shared]
    if order_a != order_b:
        return "roles"
    for marker in _ROLE_MARKERS:
        sa, sb = _sides(wa, marker), _sides(wb, marker)
        if sa is None or sb is None:
            continue
        (before_a, after_a), (before_b, after_b) = sa, sb
        if (before_a & after_b) - before_b and (after_a & before_b) - after_b:
            return "roles"
    return None


def passes(a: str, b: str) -> bool:
    """Whether no guard rejects the pair (see :func:`guard`)."""
    return guard(a, b) is None
