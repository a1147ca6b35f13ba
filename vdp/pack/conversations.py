"""Multi-turn conversations (LLaVA-style instruction data): checked when read, frames put in when packed.

A record's turns are `{"from", "value"}` objects alternating human, gpt, human, gpt, ...
(`user`/`assistant` are read as `human`/`gpt`, the roles stage 2 knows). The video stands
where the first human turn's `<image>` (or `<video>`) placeholder is; when packed, that
placeholder becomes the sampled frames' own placeholders (the sampler's prompt), in place. A
record without one gets the frames at the start of its first human turn, followed by a
newline, as LLaVA's own training code puts the image token there. One video per record: a
second placeholder anywhere is an error, as is everything else that would make stage 2
tokenize something other than what the annotation says.
"""

from __future__ import annotations

import re

from vdp.errors import RecordError

ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}
VIDEO_PLACEHOLDER = re.compile(r"<image>|<video>")
# What stage 2 reads as frame placeholders besides <image>: in the source text they would be
# counted as frames that are not there.
FRAME_PLACEHOLDER = re.compile(r"<[IP]image>")


def conversation_turns(raw: object) -> list[dict]:
    """The turns as `[{"from": "human"|"gpt", "value": str}, ...]`; RecordError naming what is wrong."""
    if raw is None:
        raise RecordError("missing conversations")
    if not isinstance(raw, list):
        raise RecordError(f"conversations is not a list ({type(raw).__name__})")
    if not raw:
        raise RecordError("empty conversations")
    turns = [_turn(i, t) for i, t in enumerate(raw)]
    for i, turn in enumerate(turns):
        want = "human" if i % 2 == 0 else "gpt"
        if turn["from"] != want:
            raise RecordError(f"turn {i} is {turn['from']} where {want} belongs (turns alternate human, gpt)")
    if turns[-1]["from"] != "gpt":
        raise RecordError(f"turn {len(turns) - 1} is human with no gpt answer after it")
    _check_placeholders(turns)
    return turns


def _turn(i: int, turn: object) -> dict:
    if not isinstance(turn, dict):
        raise RecordError(f"turn {i} is not an object")
    role, value = turn.get("from"), turn.get("value")
    if role not in ROLES:
        raise RecordError(f"turn {i} has unknown role {role!r} (want human/gpt or user/assistant)")
    if not isinstance(value, str):
        raise RecordError(f"turn {i} has no text value" if value is None else f"turn {i} value is not text")
    if not value.strip():
        raise RecordError(f"turn {i} has an empty value")
    return {"from": ROLES[role], "value": value}


def _check_placeholders(turns: list[dict]) -> None:
    """At most one video placeholder, in the first human turn; no frame placeholders at all."""
    seen = 0
    for i, turn in enumerate(turns):
        if turn["from"] != "human":
            continue  # stage 2 reads placeholders in human turns only: in answers they are text
        reserved = FRAME_PLACEHOLDER.search(turn["value"])
        if reserved:
            raise RecordError(f"turn {i} holds the frame placeholder {reserved.group()} (stage 2 would count it as a frame)")
        for found in VIDEO_PLACEHOLDER.finditer(turn["value"]):
            if seen or i > 0:
                raise RecordError(f"turn {i} has a second video placeholder {found.group()} (one video per record)")
            seen += 1


def with_frames(turns: list[dict], frames: str) -> list[dict]:
    """All turns in order, the first human turn's placeholder replaced by `frames` (else `frames` + newline before it)."""
    first = turns[0]["value"]
    if VIDEO_PLACEHOLDER.search(first):
        value = VIDEO_PLACEHOLDER.sub(lambda _: frames, first, count=1)  # a function: no backslash escapes
    else:
        value = frames + "\n" + first
    return [{"from": turns[0]["from"], "value": value}, *({"from": t["from"], "value": t["value"]} for t in turns[1:])]


def first_answer(turns: list[dict]) -> str:
    """The first gpt turn: the record's `caption` (what a caption-only reader of the json sees)."""
    return next(t["value"] for t in turns if t["from"] == "gpt")
