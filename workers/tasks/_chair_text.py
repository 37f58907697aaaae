"""CHAIR's caption parsing: which MSCOCO objects a caption mentions.

A faithful port of ``CHAIR.caption_to_words`` (shikiw/OPERA:chair.py, from
LisaAnne/Hallucination:utils/chair.py; lmms-eval:lmms_eval/tasks/coco_cap_chair/utils.py is the same):
lowercase, ``nltk.word_tokenize``, ``nltk.pos_tag``, WordNet lemmatisation with the tag's part of speech
(nouns when the tag is not J/V/N/R), merge the "double words", drop ``seat`` when ``toilet`` is present, keep
words of the synonym vocabulary and map them to their node word.

Two parsers, named in the task's metadata:

* ``"builtin"`` (default, needs no NLTK data download): NLTK's own ``PunktSentenceTokenizer`` without a
  trained model + ``NLTKWordTokenizer`` (the two halves of ``word_tokenize``), NLTK's ``PerceptronTagger``
  with the official English weights vendored in ``data/perceptron_tagger_eng.json.gz`` (checked against
  ``TAGGER_SHA256`` on load; see ``data/build_tagger.py``), and WordNet 3.0 from Debian's ``wordnet-base``
  (``_wordnet.py``). It can differ from ``"nltk"`` only where the trained English Punkt model knows an
  abbreviation: there ``word_tokenize`` keeps the period on the token (``"etc."``) and this parser splits it
  off, which changes the token count (``mean_words``) and, rarely, the tag of a neighbouring word.
* ``"nltk"``: ``nltk.word_tokenize`` and ``nltk.pos_tag`` themselves, for exact parity with OPERA/lmms-eval;
  needs ``python -m nltk.downloader punkt_tab averaged_perceptron_tagger_eng`` (not possible offline).

Quirks kept on purpose (they are in every published CHAIR number): the synonym list's ``" motor bike"`` and
``" cheesecake"`` carry a leading space and so never match; the three-word ``"stove top oven"`` can never
match the two-word merge; ``"seated"`` tagged as a verb lemmatises to ``seat`` and counts as a chair.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from workers.tasks._errors import DataError
from workers.tasks._wordnet import WordNetMorphy, load_wordnet

__all__ = [
    "CaptionObjects",
    "CaptionParser",
    "caption_parser",
    "CAPTION_PARSERS",
    "COCO_NODE_WORDS",
    "node_word",
]

CAPTION_PARSERS: tuple[str, ...] = ("builtin", "nltk")
TAGGER_FILE = Path(__file__).with_name("data") / "perceptron_tagger_eng.json.gz"
TAGGER_SHA256 = "b3077bf6295c6f6649ed93daec8a41cbf23c731c157da170102da7400ffacbb0"

# LisaAnne/Hallucination:data/synonyms.txt as inlined in shikiw/OPERA:chair.py (BSD-2-Clause); one COCO class
# a line, the first entry is the node word. Kept as is (double spaces included) except two trailing blanks,
# which the parser strips anyway.
_SYNONYMS_TXT = """\
person, girl, boy, man, woman, kid, child, chef, baker, people, adult, rider, children, baby, worker, passenger, sister, biker, policeman, cop, officer, lady, cowboy, bride, groom, male, female, guy, traveler, mother, father, gentleman, pitcher, player, skier, snowboarder, skater, skateboarder, person, woman, guy, foreigner, child, gentleman, caller, offender, coworker, trespasser, patient, politician, soldier, grandchild, serviceman, walker, drinker, doctor, bicyclist, thief, buyer, teenager, student, camper, driver, solider, hunter, shopper, villager
bicycle, bike, bicycle, bike, unicycle, minibike, trike
car, automobile, van, minivan, sedan, suv, hatchback, cab, jeep, coupe, taxicab, limo, taxi
motorcycle, scooter,  motor bike, motor cycle, motorbike, scooter, moped
airplane, jetliner, plane, air plane, monoplane, aircraft, jet, jetliner, airbus, biplane, seaplane
bus, minibus, trolley
train, locomotive, tramway, caboose
truck, pickup, lorry, hauler, firetruck
boat, ship, liner, sailboat, motorboat, dinghy, powerboat, speedboat, canoe, skiff, yacht, kayak, catamaran, pontoon, houseboat, vessel, rowboat, trawler, ferryboat, watercraft, tugboat, schooner, barge, ferry, sailboard, paddleboat, lifeboat, freighter, steamboat, riverboat, battleship, steamship
traffic light, street light, traffic signal, stop light, streetlight, stoplight
fire hydrant, hydrant
stop sign
parking meter
bench, pew
bird, ostrich, owl, seagull, goose, duck, parakeet, falcon, robin, pelican, waterfowl, heron, hummingbird, mallard, finch, pigeon, sparrow, seabird, osprey, blackbird, fowl, shorebird, woodpecker, egret, chickadee, quail, bluebird, kingfisher, buzzard, willet, gull, swan, bluejay, flamingo, cormorant, parrot, loon, gosling, waterbird, pheasant, rooster, sandpiper, crow, raven, turkey, oriole, cowbird, warbler, magpie, peacock, cockatiel, lorikeet, puffin, vulture, condor, macaw, peafowl, cockatoo, songbird
cat, kitten, feline, tabby
dog, puppy, beagle, pup, chihuahua, schnauzer, dachshund, rottweiler, canine, pitbull, collie, pug, terrier, poodle, labrador, doggie, doberman, mutt, doggy, spaniel, bulldog, sheepdog, weimaraner, corgi, cocker, greyhound, retriever, brindle, hound, whippet, husky
horse, colt, pony, racehorse, stallion, equine, mare, foal, palomino, mustang, clydesdale, bronc, bronco
sheep, lamb, ram, lamb, goat, ewe
cow, cattle, oxen, ox, calf, cattle, holstein, heifer, buffalo, bull, zebu, bison
elephant
bear, panda
zebra
giraffe
backpack, knapsack
umbrella
handbag, wallet, purse, briefcase
tie, bow, bow tie
suitcase, suit case, luggage
frisbee
skis, ski
snowboard
sports ball, ball
kite
baseball bat
baseball glove
skateboard
surfboard, longboard, skimboard, shortboard, wakeboard
tennis racket, racket
bottle
wine glass
cup
fork
knife, pocketknife, knive
spoon
bowl, container
banana
apple
sandwich, burger, sub, cheeseburger, hamburger
orange
broccoli
carrot
hot dog
pizza
donut, doughnut, bagel
cake,  cheesecake, cupcake, shortcake, coffeecake, pancake
chair, seat, stool
couch, sofa, recliner, futon, loveseat, settee, chesterfield
potted plant, houseplant
bed
dining table, table, desk
toilet, urinal, commode, toilet, lavatory, potty
tv, monitor, televison, television
laptop, computer, notebook, netbook, lenovo, macbook, laptop computer
mouse
remote
keyboard
cell phone, mobile phone, phone, cellphone, telephone, phon, smartphone, iPhone
microwave
oven, stovetop, stove, stove top oven
toaster
sink
refrigerator, fridge, fridge, freezer
book
clock
vase
scissors
teddy bear, teddybear
hair drier, hairdryer
toothbrush
"""

# shikiw/OPERA:chair.py CHAIR.__init__ (coco_double_words, animal_words, vehicle_words and the three
# overrides).
_COCO_DOUBLE_WORDS = (
    "motor bike",
    "motor cycle",
    "air plane",
    "traffic light",
    "street light",
    "traffic signal",
    "stop light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "suit case",
    "sports ball",
    "baseball bat",
    "baseball glove",
    "tennis racket",
    "wine glass",
    "hot dog",
    "cell phone",
    "mobile phone",
    "teddy bear",
    "hair drier",
    "potted plant",
    "bow tie",
    "laptop computer",
    "stove top oven",
    "home plate",
    "train track",
)
_ANIMAL_WORDS = (
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "animal",
    "cub",
)
_VEHICLE_WORDS = ("jet", "train")


def _synonym_table() -> dict[str, str]:
    """Object word -> node word, parsed exactly as ``line.strip().split(', ')``."""
    table: dict[str, str] = {}
    for line in _SYNONYMS_TXT.splitlines():
        entries = line.strip().split(", ")
        for entry in entries:
            table[entry] = entries[0]
    return table


def _double_word_table() -> dict[str, str]:
    table = {word: word for word in _COCO_DOUBLE_WORDS}
    for animal in _ANIMAL_WORDS:
        table[f"baby {animal}"] = animal
        table[f"adult {animal}"] = animal
    for vehicle in _VEHICLE_WORDS:
        table[f"passenger {vehicle}"] = vehicle
    table.update({"bow tie": "tie", "toilet seat": "toilet", "wine glas": "wine glass"})
    return table


_NODE_OF: Mapping[str, str] = _synonym_table()
_DOUBLE_WORDS: Mapping[str, str] = _double_word_table()
COCO_NODE_WORDS: frozenset[str] = frozenset(_NODE_OF.values())


def node_word(name: str) -> str:
    """Node word of a COCO category name or synonym (``"man"`` -> ``"person"``).

    Raises:
        DataError: ``name`` is not in the synonym vocabulary.
    """
    try:
        return _NODE_OF[name]
    except KeyError as e:
        raise DataError(f"{name!r} is not a COCO object word of CHAIR's synonym list") from e


@dataclass(frozen=True)
class CaptionObjects:
    """The object mentions of one caption, in order and with repeats."""

    words: tuple[str, ...]  # the vocabulary word of each mention ("man", "hot dog")
    node_words: tuple[str, ...]  # its COCO node word ("person", "hot dog")
    n_words: int  # tokens after merging double words, before dropping "seat" (OPERA's raw_words, for Len)


Tagger = Callable[[str], list[tuple[str, str]]]


@dataclass(frozen=True)
class CaptionParser:
    """Turns a caption into its COCO object mentions; ``name`` is one of :data:`CAPTION_PARSERS`."""

    name: str
    tag: Tagger
    morphy: WordNetMorphy

    def __reduce__(self) -> tuple[Callable[[str], CaptionParser], tuple[str]]:
        """Pickled by name: the receiving process loads its own tagger and WordNet."""
        return caption_parser, (self.name,)

    def parse(self, caption: str) -> CaptionObjects:
        """shikiw/OPERA:chair.py ``CHAIR.caption_to_words``."""
        lemmas = [self.morphy.lemmatize(word, _wordnet_pos(tag)) for word, tag in self.tag(caption.lower())]
        merged = _merge_double_words(lemmas)
        words = [w for w in merged if w != "seat"] if "toilet" in merged and "seat" in merged else merged
        mentions = tuple(w for w in words if w in _NODE_OF)
        return CaptionObjects(
            words=mentions, node_words=tuple(_NODE_OF[w] for w in mentions), n_words=len(merged)
        )


def caption_parser(name: str = "builtin") -> CaptionParser:
    """The parser called ``name`` with its data loaded (cached per process).

    Raises:
        DataError: WordNet (both parsers) or NLTK's punkt_tab/tagger data (``"nltk"``) is not installed.
        ValueError: unknown ``name``.
    """
    taggers: dict[str, Callable[[], Tagger]] = {"builtin": _builtin_tagger, "nltk": _nltk_tagger}
    if name not in taggers:
        raise DataError(f"caption parser {name!r} is not one of {', '.join(CAPTION_PARSERS)}")
    return CaptionParser(name=name, tag=taggers[name](), morphy=load_wordnet())


def _wordnet_pos(tag: str) -> str:
    """shikiw/OPERA:chair.py ``get_wordnet_pos`` with its ``or wordnet.NOUN`` fallback."""
    return {"J": "a", "V": "v", "N": "n", "R": "r"}.get(tag[:1], "n")


def _merge_double_words(words: list[str]) -> list[str]:
    merged: list[str] = []
    i = 0
    while i < len(words):
        pair = " ".join(words[i : i + 2])
        if pair in _DOUBLE_WORDS:
            merged.append(_DOUBLE_WORDS[pair])
            i += 2
        else:
            merged.append(words[i])
            i += 1
    return merged


@cache
def _builtin_tagger() -> Tagger:
    from nltk.tag.perceptron import PerceptronTagger
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    try:
        blob = TAGGER_FILE.read_bytes()
    except OSError as e:
        raise DataError(f"{TAGGER_FILE}: cannot read the vendored POS tagger: {e.strerror or e}") from e
    digest = hashlib.sha256(blob).hexdigest()
    if digest != TAGGER_SHA256:
        raise DataError(f"{TAGGER_FILE}: SHA-256 {digest} is not the vetted {TAGGER_SHA256}")
    tagger = PerceptronTagger(load=False)
    tagger.decode_json_params(json.loads(gzip.decompress(blob)))
    sentences, words = PunktSentenceTokenizer(), NLTKWordTokenizer()

    def tag(text: str) -> list[tuple[str, str]]:
        return tagger.tag(
            [token for sentence in sentences.tokenize(text) for token in words.tokenize(sentence)]
        )

    return tag


@cache
def _nltk_tagger() -> Tagger:
    import nltk

    for resource in ("tokenizers/punkt_tab/english/", "taggers/averaged_perceptron_tagger_eng/"):
        try:
            nltk.data.find(resource)
        except LookupError as e:
            raise DataError(
                f"caption parser 'nltk' needs NLTK's {resource.split('/')[1]} data: "
                "python -m nltk.downloader punkt_tab averaged_perceptron_tagger_eng (or use parser='builtin')"
            ) from e
    return lambda text: nltk.pos_tag(nltk.word_tokenize(text))
