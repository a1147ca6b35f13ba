"""Filters that lose nothing: a record a rule rejects is a line of filtered-{machine_id}.jsonl.

A rule reads the sample's json once it is built (its duration, size and signals), before any
JPEG is encoded; the first rule that fails, in RULES order, is the one reported:
`{"key", "source", "rule", "value", "threshold"}`. A filtered record is not an error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    read: Callable[[dict], float]  # the value, from the sample's json
    keep_below: bool  # True: a maximum (values above it are filtered); False: a minimum
    help: str


RULES: dict[str, Rule] = {
    "min_duration": Rule(lambda doc: doc["duration"], False, "filter videos (clips) shorter than this many seconds"),
    "max_duration": Rule(lambda doc: doc["duration"], True, "filter videos (clips) longer than this many seconds"),
    "min_side": Rule(lambda doc: min(doc["width"], doc["height"]), False,
                     "filter videos whose shorter side has fewer pixels"),
    "min_motion": Rule(lambda doc: doc["signals"]["motion"], False,
                       "filter samples whose signals.motion is below this"),
    "max_static_share": Rule(lambda doc: doc["signals"]["static_share"], True,
                             "filter samples whose signals.static_share is above this"),
    "max_black_share": Rule(lambda doc: doc["signals"]["black_share"], True,
                            "filter samples whose signals.black_share is above this"),
}
SIGNAL_RULES = ("min_motion", "max_static_share", "max_black_share")  # need the signals computed


@dataclass(frozen=True)
class Filter:
    rule: str  # a RULES name (the flag without its dashes)
    threshold: float


def failed(doc: dict, filters: Iterable[Filter]) -> dict | None:
    """The first filter `doc` fails, as `{"rule", "value", "threshold"}`; None when it passes them all."""
    for f in filters:
        rule = RULES[f.rule]
        value = rule.read(doc)
        if (value > f.threshold) if rule.keep_below else (value < f.threshold):
            return {"rule": f.rule, "value": value, "threshold": f.threshold}
    return None


def filtered_entry(key: str, source: str, verdict: dict) -> dict:
    return {"key": key, "source": source, **verdict}


def rule_counts(rows: Iterable[dict]) -> Counter:
    """Filtered records by rule, labelled for the summary."""
    return Counter(f"filtered by {r['rule']}" for r in rows)
