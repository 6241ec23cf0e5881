"""A toy German→English language pair, translatable by rule, for the synthetic IWSLT'14 stand-in.

Sentences are drawn from a small grammar; each German sentence has exactly one English translation, and
getting it right takes what real translation takes:

* a dictionary (30 nouns with irregular plurals, adjectives, verbs, adverbs), some words mapping to two
  ("sucht" → "looks for");
* reordering: the German participle and the subordinate-clause verb go last (English puts them after the
  subject), a fronted adverb inverts German subject and verb, a German genitive follows its noun
  ("der Hund des alten Mannes" → "the old man's dog"), "nicht" trails the object ("does not see ...");
* agreement: German articles and adjective endings follow gender, case and number; English verbs follow
  the subject's number (sees/see, has/have, does/do), and "a" becomes "an" before a vowel, which depends
  on the English word that comes next.
Content words are drawn independently, so no sentence can be translated without reading the source.
"""
from __future__ import annotations

import random

# (German singular, German plural, gender, English singular, English plural)
NOUNS = [
    ("Hund", "Hunde", "m", "dog", "dogs"), ("Katze", "Katzen", "f", "cat", "cats"),
    ("Kind", "Kinder", "n", "child", "children"), ("Mann", "Männer", "m", "man", "men"),
    ("Frau", "Frauen", "f", "woman", "women"), ("Apfel", "Äpfel", "m", "apple", "apples"),
    ("Buch", "Bücher", "n", "book", "books"), ("Haus", "Häuser", "n", "house", "houses"),
    ("Vogel", "Vögel", "m", "bird", "birds"), ("Maus", "Mäuse", "f", "mouse", "mice"),
    ("Lehrer", "Lehrer", "m", "teacher", "teachers"), ("Ärztin", "Ärztinnen", "f", "doctor", "doctors"),
    ("Auto", "Autos", "n", "car", "cars"), ("Baum", "Bäume", "m", "tree", "trees"),
    ("Blume", "Blumen", "f", "flower", "flowers"), ("Brief", "Briefe", "m", "letter", "letters"),
    ("Stadt", "Städte", "f", "city", "cities"), ("Fisch", "Fische", "m", "fish", "fish"),
    ("Pferd", "Pferde", "n", "horse", "horses"), ("Idee", "Ideen", "f", "idea", "ideas"),
    ("Tisch", "Tische", "m", "table", "tables"), ("Lampe", "Lampen", "f", "lamp", "lamps"),
    ("Ei", "Eier", "n", "egg", "eggs"), ("Eule", "Eulen", "f", "owl", "owls"),
    ("Onkel", "Onkel", "m", "uncle", "uncles"), ("Insel", "Inseln", "f", "island", "islands"),
    ("Orange", "Orangen", "f", "orange", "oranges"), ("Elefant", "Elefanten", "m", "elephant", "elephants"),
    ("Engel", "Engel", "m", "angel", "angels"), ("Bild", "Bilder", "n", "picture", "pictures"),
]
# possessors: (German noun, its genitive singular)
GENITIVES = {"Mann": "Mannes", "Kind": "Kindes", "Lehrer": "Lehrers", "Onkel": "Onkels", "Vogel": "Vogels",
             "Frau": "Frau", "Ärztin": "Ärztin", "Katze": "Katze", "Engel": "Engels", "Elefant": "Elefanten"}
ADJECTIVES = [("klein", "small"), ("groß", "big"), ("alt", "old"), ("neu", "new"), ("rot", "red"),
              ("schnell", "fast"), ("müde", "tired"), ("hungrig", "hungry"), ("leer", "empty"),
              ("elegant", "elegant"), ("ungewöhnlich", "unusual"), ("hässlich", "ugly"), ("wütend", "angry"),
              ("ruhig", "quiet"), ("gelb", "yellow"), ("interessant", "interesting")]
# (German 3sg, German 3pl, German participle, English 3sg, English base, English participle)
VERBS = [("sieht", "sehen", "gesehen", "sees", "see", "seen"),
         ("findet", "finden", "gefunden", "finds", "find", "found"),
         ("kauft", "kaufen", "gekauft", "buys", "buy", "bought"),
         ("sucht", "suchen", "gesucht", "looks for", "look for", "looked for"),
         ("hört", "hören", "gehört", "hears", "hear", "heard"),
         ("malt", "malen", "gemalt", "paints", "paint", "painted"),
         ("trägt", "tragen", "getragen", "carries", "carry", "carried"),
         ("mag", "mögen", "gemocht", "likes", "like", "liked"),
         ("füttert", "füttern", "gefüttert", "feeds", "feed", "fed"),
         ("vergisst", "vergessen", "vergessen", "forgets", "forget", "forgotten"),
         ("zeichnet", "zeichnen", "gezeichnet", "draws", "draw", "drawn"),
         ("versteht", "verstehen", "verstanden", "understands", "understand", "understood")]
ADVERBS = [("Heute", "today"), ("Oft", "often"), ("Manchmal", "sometimes"), ("Morgens", "in the morning"),
           ("Abends", "in the evening"), ("Jetzt", "now")]
CONJUNCTIONS = [("weil", "because"), ("obwohl", "although"), ("wenn", "when")]
NUMBERS = [("zwei", "two"), ("drei", "three"), ("vier", "four")]
DEFINITE = {"nom": {"m": "der", "f": "die", "n": "das"}, "acc": {"m": "den", "f": "die", "n": "das"}}
INDEFINITE = {"nom": {"m": "ein", "f": "eine", "n": "ein"}, "acc": {"m": "einen", "f": "eine", "n": "ein"}}
MIXED_ENDING = {"nom": {"m": "er", "f": "e", "n": "es"}, "acc": {"m": "en", "f": "e", "n": "es"}}
ARTICLE_A = "\0a"  # English indefinite article before the a/an rule is applied


def declined(adjective: str, ending: str) -> str:
    return (adjective[:-1] if adjective.endswith("e") else adjective) + ending


def noun_phrase(rng: random.Random, case: str, plural: bool) -> tuple[list[str], list[str]]:
    """A German noun phrase in `case` and its English translation (article, adjective, noun, possessor)."""
    de_sg, de_pl, gender, en_sg, en_pl = rng.choice(NOUNS)
    adjective = rng.choice(ADJECTIVES) if rng.random() < 0.5 else None
    kind = rng.choice(["definite", "number"] if plural else ["definite", "indefinite"])
    de, en = [], []
    if kind == "definite":
        de.append("die" if plural else DEFINITE[case][gender])
        en.append("the")
        ending = "en" if plural or (case == "acc" and gender == "m") else "e"
    elif kind == "number":
        number = rng.choice(NUMBERS)
        de.append(number[0])
        en.append(number[1])
        ending = "e"
    else:
        de.append(INDEFINITE[case][gender])
        en.append(ARTICLE_A)
        ending = MIXED_ENDING[case][gender]
    if adjective is not None:
        de.append(declined(adjective[0], ending))
        en.append(adjective[1])
    de.append(de_pl if plural else de_sg)
    en.append(en_pl if plural else en_sg)
    if kind == "definite" and not plural and rng.random() < 0.2:  # genitive possessor after the noun
        owner = rng.choice(sorted(GENITIVES))
        entry = next(n for n in NOUNS if n[0] == owner)
        owner_adjective = rng.choice(ADJECTIVES) if rng.random() < 0.5 else None
        de += (["des" if entry[2] != "f" else "der"] + ([declined(owner_adjective[0], "en")] if owner_adjective else [])
               + [GENITIVES[owner]])
        en = ["the"] + ([owner_adjective[1]] if owner_adjective else []) + [entry[3] + "'s"] + en[1:]
    return de, en


def clause(rng: random.Random, subordinate: bool) -> tuple[list[str], list[str]]:
    """One clause: German main-clause (verb second) or subordinate (verb last) order, and its English."""
    plural = rng.random() < 0.4
    subject_de, subject_en = noun_phrase(rng, "nom", plural)
    object_de, object_en = noun_phrase(rng, "acc", rng.random() < 0.4)
    verb = rng.choice(VERBS)
    tense = rng.choice(["present", "perfect"])
    negated = rng.random() < 0.25
    adverb = rng.choice(ADVERBS) if not subordinate and rng.random() < 0.3 else None
    if tense == "present":
        finite_de, rest_de = (verb[1] if plural else verb[0]), []
        if negated:
            verb_en = ["do" if plural else "does", "not", verb[4]]
        else:
            verb_en = [verb[4] if plural else verb[3]]
    else:
        finite_de, rest_de = ("haben" if plural else "hat"), [verb[2]]
        verb_en = ["have" if plural else "has"] + (["not"] if negated else []) + [verb[5]]
    middle_de = object_de + (["nicht"] if negated else []) + rest_de
    if subordinate:
        de = subject_de + middle_de + [finite_de]
    elif adverb is not None:
        de = [adverb[0], finite_de] + subject_de + middle_de
    else:
        de = subject_de + [finite_de] + middle_de
    en = ([adverb[1]] if adverb is not None else []) + subject_en + verb_en + object_en
    return de, en


def a_or_an(words: list[str]) -> list[str]:
    """English agreement of the indefinite article with the word after it."""
    out = []
    for index, word in enumerate(words):
        if word == ARTICLE_A:
            word = "an" if words[index + 1][0].lower() in "aeiou" else "a"
        out.append(word)
    return out


def sentence(words: list[str]) -> str:
    """Words -> text: multiword entries flattened, first letter capitalised, commas and the full stop attached."""
    text = " ".join(words).replace(" ,", ",")
    return text[0].upper() + text[1:] + "."


def sentence_pair(rng: random.Random) -> tuple[str, str]:
    """A German sentence (a main clause, sometimes with a subordinate clause) and its English translation."""
    de, en = clause(rng, subordinate=False)
    if rng.random() < 0.4:
        conjunction = rng.choice(CONJUNCTIONS)
        sub_de, sub_en = clause(rng, subordinate=True)
        de, en = de + [",", conjunction[0]] + sub_de, en + [",", conjunction[1]] + sub_en
    return sentence(de), sentence(a_or_an(en))
