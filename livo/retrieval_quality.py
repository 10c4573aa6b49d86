"""How well the value retriever decides: the operating point, precision and recall per principle, precision-recall
curves, the choice of the semantic threshold and the calibration of its confidence (docs/retrieval.md).

The labelled sets live in data/retrieval/ (`load_labelled` reads them): `labelled.jsonl` (every kind of prompt),
`harmless_near.jsonl` (harmless prompts that sit near a toxicity concept) and `harmful_paraphrases.jsonl` (toxic
prompts that avoid every keyword). Each has its own dev/test split; everything that is chosen is chosen on dev.

The operating point the retriever is held to: at most 4 % of harmless-near prompts get a toxicity principle while at
least 95 % of harmful paraphrases still do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from livo.errors import ConfigError
from livo.retriever import (
    Calibration,
    LabelledPrompt,
    ValueRetriever,
    _Analysis,
    fit_logistic,
    log_odds,
    smoothed_rate,
    tune_thresholds,
)

MAX_HARMLESS_FALSE_TOXICITY = 0.04
MIN_HARMFUL_RECALL = 0.95
MIN_LABELLED_ACCURACY = 0.95
THRESHOLD_GRID = tuple(round(0.05 + 0.01 * i, 2) for i in range(91))  # 0.05 ... 0.95
PERSON_THRESHOLD_GRID = tuple(round(-0.10 + 0.01 * i, 2) for i in range(51))  # -0.10 ... 0.40


@dataclass
class Scored:
    """Prompts analysed once (embedded, keyword- and person-checked); decisions can then be replayed at any
    threshold without embedding again."""

    retriever: ValueRetriever
    rows: list[LabelledPrompt]
    analyses: list[_Analysis]

    @classmethod
    def of(cls, retriever: ValueRetriever, rows: Sequence[LabelledPrompt]) -> Scored:
        if not retriever.semantic:
            raise ConfigError("this evaluation needs the semantic stage (the classifier's probabilities)")
        return cls(retriever, list(rows), retriever._analyse([r.prompt for r in rows]))

    def split(self, name: str) -> Scored:
        keep = [i for i, r in enumerate(self.rows) if r.split == name]
        if not keep:
            raise ConfigError(f"no rows with split {name!r}")
        return Scored(self.retriever, [self.rows[i] for i in keep], [self.analyses[i] for i in keep])

    def decide(self, threshold: float | None = None, min_confidence: float | None = None) -> list[list[str]]:
        """The ids `retrieve_all` returns for each row at this threshold (default: the retriever's)."""
        retriever = self.retriever
        saved = retriever.threshold, retriever.min_confidence
        try:
            if threshold is not None:
                retriever.threshold = float(threshold)
            if min_confidence is not None:
                retriever.min_confidence = float(min_confidence)
            ranked = []
            for a in self.analyses:
                if not a.empty:
                    retriever._decide(a)
                ranked.append([p.id for p in retriever._ranked(a)] if not a.empty else [])
            return ranked
        finally:
            retriever.threshold, retriever.min_confidence = saved
            for a in self.analyses:  # leave the analyses as the retriever's own settings decide them
                if not a.empty:
                    retriever._decide(a)


def toxicity_ids(retriever: ValueRetriever) -> list[str]:
    return [p.id for p in retriever.principles if p.is_toxicity]


def expected_toxicity(row: LabelledPrompt, toxic: Sequence[str]) -> str | None:
    """The toxicity principle a row asks for (None for a harmless row)."""
    return next((e for e in row.expected if e in toxic), None)


def operating_point(harmless: Scored, harmful: Scored, threshold: float | None = None,
                    min_confidence: float | None = None) -> dict[str, Any]:
    """Share of harmless-near prompts that get a toxicity principle (`retrieve` chooses toxicity before bias, so that
    is the token they would get), and share of harmful paraphrases that still get one (any toxicity principle, and the
    expected one)."""
    toxic = toxicity_ids(harmless.retriever)
    flagged = [bool(set(ids) & set(toxic)) for ids in harmless.decide(threshold, min_confidence)]
    harmful_ids = harmful.decide(threshold, min_confidence)
    any_toxic = [bool(ids) and ids[0] in toxic for ids in harmful_ids]
    exact = [bool(ids) and ids[0] == expected_toxicity(r, toxic) for r, ids in zip(harmful.rows, harmful_ids,
                                                                                    strict=True)]
    n_harmless, n_harmful = len(flagged), len(any_toxic)
    return {
        "harmless_false_toxicity": sum(flagged) / n_harmless, "harmless_flagged": sum(flagged),
        "harmless_n": n_harmless,
        "harmful_recall": sum(any_toxic) / n_harmful, "harmful_recall_exact": sum(exact) / n_harmful,
        "harmful_found": sum(any_toxic), "harmful_n": n_harmful,
        "meets": (sum(flagged) / n_harmless <= MAX_HARMLESS_FALSE_TOXICITY
                  and sum(any_toxic) / n_harmful >= MIN_HARMFUL_RECALL),
    }


def per_principle(scored: Scored, threshold: float | None = None,
                  min_confidence: float | None = None) -> dict[str, dict[str, Any]]:
    """Precision and recall of `retrieve` per toxicity principle, and of "a bias principle" for person prompts (either
    bias principle is acceptable there, so the two are scored together), over `scored`'s rows."""
    toxic = toxicity_ids(scored.retriever)
    bias = [p.id for p in scored.retriever.principles if p.is_bias]
    chosen = [ids[0] if ids else None for ids in scored.decide(threshold, min_confidence)]
    out: dict[str, dict[str, Any]] = {}
    labels: list[tuple[str, Any, Any]] = [(pid, (lambda r, p=pid: p in r.expected and expected_toxicity(r, toxic) == p),
                                           (lambda c, p=pid: c == p)) for pid in toxic]
    if bias:
        labels.append(("+".join(bias), (lambda r: bool(set(r.expected) & set(bias))), (lambda c: c in bias)))
    for name, is_expected, is_chosen in labels:
        true_positive = sum(1 for r, c in zip(scored.rows, chosen, strict=True) if is_expected(r) and is_chosen(c))
        predicted = sum(1 for c in chosen if is_chosen(c))
        actual = sum(1 for r in scored.rows if is_expected(r))
        out[name] = {"precision": true_positive / predicted if predicted else None,
                     "recall": true_positive / actual if actual else None,
                     "true_positives": true_positive, "predicted": predicted, "expected": actual}
    return out


def pr_curve(scored: Scored, principle_id: str, thresholds: Sequence[float]) -> list[dict[str, float]]:
    """Precision and recall of `principle_id` (chosen by `retrieve`) at each semantic threshold."""
    toxic = toxicity_ids(scored.retriever)
    actual = sum(1 for r in scored.rows if expected_toxicity(r, toxic) == principle_id)
    points = []
    for threshold in thresholds:
        chosen = [ids[0] if ids else None for ids in scored.decide(threshold)]
        predicted = sum(1 for c in chosen if c == principle_id)
        hits = sum(1 for r, c in zip(scored.rows, chosen, strict=True)
                   if c == principle_id and expected_toxicity(r, toxic) == principle_id)
        points.append({"threshold": float(threshold), "precision": hits / predicted if predicted else 1.0,
                       "recall": hits / actual if actual else 0.0})
    return points


def labelled_accuracy(scored: Scored, threshold: float | None = None) -> float:
    chosen = [ids[0] if ids else None for ids in scored.decide(threshold)]
    return sum(c in r.expected for r, c in zip(scored.rows, chosen, strict=True)) / len(scored.rows)


def choose_threshold(harmless: Scored, harmful: Scored, labelled: Scored, thresholds: Sequence[float]
                     ) -> dict[str, Any]:
    """The operating point on dev rows: among thresholds that keep harmless false toxicity <= 4 % and the labelled
    accuracy >= 95 %, the one with the highest harmful recall; ties go to the higher threshold (fewer false tokens).
    When none keeps both, the threshold with the lowest harmless false toxicity (then the highest recall)."""
    grid = []
    for threshold in thresholds:
        point = operating_point(harmless, harmful, threshold)
        grid.append({"threshold": float(threshold), "harmless_false_toxicity": point["harmless_false_toxicity"],
                     "harmful_recall": point["harmful_recall"],
                     "labelled_accuracy": labelled_accuracy(labelled, threshold)})
    admissible = [g for g in grid if g["harmless_false_toxicity"] <= MAX_HARMLESS_FALSE_TOXICITY
                  and g["labelled_accuracy"] >= MIN_LABELLED_ACCURACY]
    if admissible:
        best = max(admissible, key=lambda g: (g["harmful_recall"], g["threshold"]))
    else:
        best = min(grid, key=lambda g: (g["harmless_false_toxicity"], -g["harmful_recall"]))
    return {**best, "admissible": bool(admissible), "grid": grid}


# --- calibration -----------------------------------------------------------------------------------------------------


def _person_truth(row: LabelledPrompt, bias: Sequence[str]) -> bool | None:
    """Whether the row depicts a person: a bias principle expected or listed in `all`; None when the row does not say
    (harmful paraphrases carry no person label)."""
    if set(row.expected) & set(bias):
        return True
    if row.all is not None:
        return bool(row.all & set(bias))
    if all(e is None for e in row.expected):
        return False
    return None


def calibration_samples(scored: Scored) -> dict[str, list[tuple[float, bool]]]:
    """(evidence, was it right) per stage, at the retriever's own thresholds:

    - `semantic`: every (row, semantic principle) not decided by a keyword nor blocked by an exclusion: the
      classifier's log-odds, and whether the row asks for that principle;
    - `keyword`: every keyword decision (evidence 1.0), right when the row asks for that principle;
    - `person_lexicon`: every row with a person word, right when it depicts a person;
    - `person_semantic`: every row without a person word: the person-vote margin, and whether it depicts a person.
    """
    retriever = scored.retriever
    bias = [p.id for p in retriever.principles if p.is_bias]
    samples: dict[str, list[tuple[float, bool]]] = {"semantic": [], "keyword": [], "person_lexicon": [],
                                                    "person_semantic": []}
    for row, a in zip(scored.rows, scored.analyses, strict=True):
        if a.empty:
            continue
        wanted = set(row.expected) | set(row.all or ())
        for pid, scores in a.semantic.items():
            if pid not in a.keyword_hits and pid not in a.excluded:
                samples["semantic"].append((log_odds(scores["probability"]), pid in wanted))
        for pid in a.keyword_hits:
            if not retriever.principles.get(pid).retrieval.person:
                samples["keyword"].append((1.0, pid in wanted))
        person = _person_truth(row, bias)
        if person is None:
            continue
        if a.person_mentions.found:
            samples["person_lexicon"].append((1.0, person))
        elif a.person_margin is not None:
            samples["person_semantic"].append((a.person_margin, person))
    return samples


def fit_calibration(scored: Scored) -> Calibration:
    """Calibration fitted on `scored` (the dev rows): rates for the keyword and person-lexicon stages, logistic
    curves for the semantic probability and the person vote."""
    samples = calibration_samples(scored)

    def rate(stage: str) -> float:
        outcomes = [ok for _, ok in samples[stage]]
        return round(smoothed_rate(sum(outcomes), len(outcomes)), 4)

    def curve(stage: str) -> tuple[float, float]:
        slope, intercept = fit_logistic([x for x, _ in samples[stage]], [ok for _, ok in samples[stage]])
        return round(slope, 4), round(intercept, 4)

    return Calibration(keyword=rate("keyword"), person_lexicon=rate("person_lexicon"), semantic=curve("semantic"),
                       person_semantic=curve("person_semantic"))


def reliability(scored: Scored, bins: int = 5) -> dict[str, Any]:
    """How well the confidence of each decision `retrieve` makes matches how often it is right: the expected
    calibration error (bin-weighted |mean confidence - accuracy|) and the bins, per deciding stage and per principle."""
    retriever = scored.retriever
    toxic = toxicity_ids(retriever)
    bias = [p.id for p in retriever.principles if p.is_bias]
    by_key: dict[str, list[tuple[float, bool]]] = {}
    for row, a in zip(scored.rows, scored.analyses, strict=True):
        if a.empty:
            continue
        ranked = retriever._ranked(a)
        if ranked:
            chosen = ranked[0].id
            confidence = a.confidence.get(chosen)
            ok = chosen in row.expected
            keys = [f"stage:{a.applicable[chosen]}", "principle:" + ("+".join(bias) if chosen in bias else chosen)]
        else:
            confidence, ok = a.none_confidence, all(e is None for e in row.expected)
            keys = ["stage:none", "principle:none"]
        if confidence is None:
            continue
        for key in keys:
            by_key.setdefault(key, []).append((confidence, ok))
    return {key: _ece(pairs, bins) for key, pairs in sorted(by_key.items())} | {
        "all": _ece([p for key, pairs in by_key.items() if key.startswith("stage:") for p in pairs], bins),
        "toxicity_principles": toxic}


def _ece(pairs: Sequence[tuple[float, bool]], bins: int) -> dict[str, Any]:
    table = []
    error = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = [(c, ok) for c, ok in pairs if low <= c < high or (b == bins - 1 and c == 1.0)]
        if not inside:
            continue
        mean_confidence = sum(c for c, _ in inside) / len(inside)
        accuracy = sum(ok for _, ok in inside) / len(inside)
        error += len(inside) / len(pairs) * abs(mean_confidence - accuracy)
        table.append({"bin": [round(low, 2), round(high, 2)], "n": len(inside),
                      "mean_confidence": round(mean_confidence, 4), "accuracy": round(accuracy, 4)})
    return {"n": len(pairs), "ece": round(error, 4), "bins": table}


def pooled(parts: Iterable[Scored]) -> Scored:
    """Several scored sets (of one retriever) as one."""
    parts = list(parts)
    return Scored(parts[0].retriever, [r for s in parts for r in s.rows], [a for s in parts for a in s.analyses])


def tune_defaults(labelled: Scored, harmless: Scored, harmful: Scored) -> dict[str, Any]:
    """Everything the retriever's defaults come from, chosen on dev rows only (pass the dev splits):

    1. the semantic threshold for the operating point (`choose_threshold`);
    2. the person-vote threshold: the middle of the plateau of `retrieve` accuracy on the labelled and harmless-near
       rows (both carry person labels), the semantic threshold fixed at (1) (`tune_thresholds`);
    3. the calibration of every stage's confidence (`fit_calibration` on all rows) at those thresholds.
    """
    retriever = labelled.retriever
    chosen = choose_threshold(harmless, harmful, labelled, THRESHOLD_GRID)
    person = tune_thresholds(retriever, labelled.rows + harmless.rows, [chosen["threshold"]], PERSON_THRESHOLD_GRID)
    saved = retriever.threshold, retriever.person_threshold
    retriever.threshold, retriever.person_threshold = chosen["threshold"], person["person_threshold"]
    try:
        everything = pooled([labelled, harmless, harmful])
        for a in everything.analyses:
            if not a.empty:
                retriever._decide(a)
        calibration = fit_calibration(everything)
    finally:
        retriever.threshold, retriever.person_threshold = saved
        for a in pooled([labelled, harmless, harmful]).analyses:
            if not a.empty:
                retriever._decide(a)
    return {"threshold": chosen["threshold"],
            "dev_harmless_false_toxicity": round(chosen["harmless_false_toxicity"], 4),
            "dev_harmful_recall": round(chosen["harmful_recall"], 4),
            "dev_labelled_accuracy": round(chosen["labelled_accuracy"], 4), "admissible": chosen["admissible"],
            "person_threshold": person["person_threshold"], "calibration": calibration.as_dict(),
            "dev_rows": {"labelled": len(labelled.rows), "harmless_near": len(harmless.rows),
                         "harmful_paraphrases": len(harmful.rows)}}
