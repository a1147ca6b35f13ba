"""LLaVA-style instruction data (`--dataset llava`): multi-turn conversations, frames where the placeholder is.

tests/data/0_30_s_academic_oe_v0_1_qa_processed.json keeps a few rows in LLaVA-Video-178K's
published shape (a JSON array of {id, conversations, data_source, video}); some subsets and
other sets ship the same records as jsonl, which must pack to the same bytes.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from tests.pack_helpers import frame_numbers, read_samples, tree_bytes
from tests.synth import VideoSpec, make_video
from tests.test_loaders import load
from vdp.cli import index, pack
from vdp.pack import manifest as manifest_module
from vdp.pack.manifest import BadRow, Record

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "0_30_s_academic_oe_v0_1_qa_processed.json")
FRAMES = 40


def published() -> list[dict]:
    with open(DATA) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    """The published rows' videos, laid out as the release's tars unpack (under --video_root)."""
    folder = tmp_path_factory.mktemp("llava_videos")
    for row in published():
        make_video(str(folder / row["video"]), VideoSpec(num_frames=FRAMES, gop=10))
    return str(folder)


def write_array(path, rows: list) -> str:
    path.write_text(json.dumps(rows, indent=4))
    return str(path)


def write_lines(path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def pack_llava(manifest: str, root: str, out, kind: str = "un", *extra: str) -> int:
    return pack.main(["--dataset", "llava", "--manifest", manifest, "--video_root", root, "--type", kind,
                      "--num_frames", "4", "--kf_iframes", "3", "--kf_total", "6", "--save_path", str(out),
                      "--workers", "1", "--no_progress", *extra])


def errors(out) -> list[dict]:
    with open(os.path.join(out, "errors-0.jsonl")) as f:
        return [json.loads(line) for line in f]


def check_turns(doc: dict, row: dict, frames: re.Pattern) -> list[str]:
    """All turns in order, the first human turn's `<image>` replaced in place; the frame placeholders found."""
    turns, source = doc["conversations"], row["conversations"]
    assert [t["from"] for t in turns] == [t["from"] for t in source]
    assert turns[1:] == source[1:], "every later turn as written"
    before, after = source[0]["value"].split("<image>", 1)
    value = turns[0]["value"]
    assert value.startswith(before) and value.endswith(after), "text around the placeholder kept"
    middle = value[len(before):len(value) - len(after)]
    found = frames.findall(middle)
    assert "".join(found) == middle, "only frame placeholders where <image> was"
    assert len(found) == len(doc["frames"]) == len(doc["image"])
    return found


def check_frames(sample: dict) -> dict:
    doc = json.loads(sample["json"])
    assert frame_numbers(sample) == [f["index"] for f in doc["frames"]], "the painted frames are the json's"
    return doc


# --- rows as published -----------------------------------------------------------------------


def test_rows_as_published_and_as_jsonl(tmp_path):
    rows = load("llava", DATA)
    first = published()[0]
    assert rows[0] == Record(first["video"], first["conversations"][1]["value"], meta={
        "id": "RW587", "data_source": "0_30_s_academic_v0_1"}, conversations=first["conversations"])
    assert rows[0].where.endswith("qa_processed.json:[0]#RW587")
    assert [len(r.conversations) for r in rows] == [2, 4, 2]
    assert load("llava", write_lines(tmp_path / "same.jsonl", published())) == rows


def test_a_broken_array_keeps_the_items_before_the_damage(tmp_path):
    text = json.dumps(published(), indent=4)
    path = tmp_path / "cut.json"
    path.write_text(text[: text.index('"ZZXQF"') + 20])  # cut inside the third record
    out = load("llava", path)
    assert [type(e) for e in out] == [Record, Record, BadRow]
    assert out[2].reason.startswith("bad JSON")


# --- packing: frames where the placeholder is ------------------------------------------------


def test_un_frames_replace_the_placeholder_in_place(tmp_path, root):
    out = tmp_path / "un"
    assert pack_llava(DATA, root, out) == 0
    samples = read_samples(str(out))
    for i, row in enumerate(published()):
        doc = check_frames(samples[f"{i:09d}"])
        assert check_turns(doc, row, re.compile(r"<image>")) == ["<image>"] * 4
        assert doc["meta"] == {"id": row["id"], "data_source": row["data_source"]}
        assert doc["caption"] == row["conversations"][1]["value"]
        assert doc["source"] == row["video"]
    assert index.main(["--dataset_path", str(out), "--dataset_name", "llava", "--output", str(tmp_path / "idx"),
                       "--workers", "1", "--no_progress"]) == 0, "stage 3 finds one placeholder per frame"


def test_kf_frames_replace_the_placeholder_with_types_and_times(tmp_path, root):
    out = tmp_path / "kf"
    assert pack_llava(DATA, root, out, "kf") == 0
    samples = read_samples(str(out))
    for i, row in enumerate(published()):
        doc = check_frames(samples[f"{i:09d}"])
        found = check_turns(doc, row, re.compile(r"<[IP]image>#\d+"))
        want = [f"<{f['type']}image>#{int(f['index'] / (doc['num_frames'] - 1) * 100)}" for f in doc["frames"]]
        assert found == want and len(found) == 6


def test_no_placeholder_other_placeholder_and_user_assistant_roles(tmp_path, root):
    video = published()[0]["video"]
    rows = [
        {"id": "a", "video": video, "conversations": [
            {"from": "human", "value": "What happens?"}, {"from": "gpt", "value": "Folding."}]},
        {"id": "b", "video": video, "conversations": [
            {"from": "user", "value": "Watch <video> then answer: what happens?"},
            {"from": "assistant", "value": "Folding."},
            {"from": "user", "value": "And then?"}, {"from": "assistant", "value": "Nothing."}]},
    ]
    out = tmp_path / "out"
    assert pack_llava(write_lines(tmp_path / "m.jsonl", rows), root, out) == 0
    samples = read_samples(str(out))
    a, b = (check_frames(samples[k]) for k in ("000000000", "000000001"))
    assert a["conversations"] == [{"from": "human", "value": "<image>" * 4 + "\nWhat happens?"},
                                  {"from": "gpt", "value": "Folding."}], "frames first when there is no placeholder"
    assert b["conversations"] == [
        {"from": "human", "value": "Watch " + "<image>" * 4 + " then answer: what happens?"},
        {"from": "gpt", "value": "Folding."}, {"from": "human", "value": "And then?"},
        {"from": "gpt", "value": "Nothing."}]


BAD = [  # (record, the reason its error line gives)
    ({"id": "no-conv"}, "missing conversations"),
    ({"id": "empty", "conversations": []}, "empty conversations"),
    ({"id": "not-list", "conversations": {"from": "human"}}, "conversations is not a list (dict)"),
    ({"id": "not-object", "conversations": ["<image>\nhi", {"from": "gpt", "value": "x"}]}, "turn 0 is not an object"),
    ({"id": "role", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "bot", "value": "a"}]},
     "turn 1 has unknown role 'bot' (want human/gpt or user/assistant)"),
    ({"id": "order", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "human", "value": "q2"},
                                       {"from": "gpt", "value": "a"}]},
     "turn 1 is human where gpt belongs (turns alternate human, gpt)"),
    ({"id": "gpt-first", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "<image>q"}]},
     "turn 0 is gpt where human belongs (turns alternate human, gpt)"),
    ({"id": "unanswered", "conversations": [{"from": "human", "value": "<image>\nq"}]},
     "turn 0 is human with no gpt answer after it"),
    ({"id": "empty-value", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": " "}]},
     "turn 1 has an empty value"),
    ({"id": "no-value", "conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]}, "turn 0 has no text value"),
    ({"id": "later", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"},
                                       {"from": "human", "value": "<image>\nq2"}, {"from": "gpt", "value": "b"}]},
     "turn 2 has a second video placeholder <image> (one video per record)"),
    ({"id": "twice", "conversations": [{"from": "human", "value": "<image><video>q"}, {"from": "gpt", "value": "a"}]},
     "turn 0 has a second video placeholder <video> (one video per record)"),
    ({"id": "reserved", "conversations": [{"from": "human", "value": "<image>q <Iimage>#3"},
                                          {"from": "gpt", "value": "a"}]},
     "turn 0 holds the frame placeholder <Iimage> (stage 2 would count it as a frame)"),
    ({"id": "no-video", "conversations": [{"from": "human", "value": "<image>q"}, {"from": "gpt", "value": "a"}]},
     "missing video"),
    ({"id": "two-videos", "video": ["a.mp4", "b.mp4"], "conversations": [
        {"from": "human", "value": "<image>q"}, {"from": "gpt", "value": "a"}]}, "video is a list of 2 (one video per record)"),
]


def test_every_bad_conversation_is_one_error_line_and_the_rest_pack(tmp_path, root):
    good = published()
    video = good[0]["video"]
    rows = [good[0]] + [dict(r, video=video) if "video" not in r and r["id"] != "no-video" else r for r, _ in BAD]
    rows.append(good[1])
    path = write_array(tmp_path / "bad.json", rows)
    out = tmp_path / "out"
    assert pack_llava(path, root, out) == 1
    samples = read_samples(str(out))
    assert sorted(samples) == ["000000000", f"{len(rows) - 1:09d}"]
    found = errors(out)
    assert [e["key"] for e in found] == [f"{i:09d}" for i in range(1, len(BAD) + 1)], "one line per bad record"
    for e, (record, reason), n in zip(found, BAD, range(1, len(BAD) + 1)):
        assert e["reason"] == f"bad row: {reason}"
        assert e["source"] == f"{path}:[{n}]#{record['id']}", "the line names the record"


def test_json_array_and_jsonl_give_the_same_tars(tmp_path, root):
    lines = write_lines(tmp_path / "same.jsonl", published())
    assert pack_llava(DATA, root, tmp_path / "a", "kf") == 0
    assert pack_llava(lines, root, tmp_path / "b", "kf") == 0
    a, b = tree_bytes(str(tmp_path / "a")), tree_bytes(str(tmp_path / "b"))
    assert [n for n in a if n.endswith(".tar")] and a == b


def test_machines_share_a_json_array_through_its_checkpoints(tmp_path, root, monkeypatch):
    """Counted in one streaming pass; each machine parses from the checkpoint before its range."""
    monkeypatch.setattr(manifest_module, "ROWS_PER_CHECKPOINT", 4)
    rows = [dict(published()[i % 3], id=f"r{i}") for i in range(11)]
    path = write_array(tmp_path / "many.json", rows)
    seen = {}
    for machine in range(3):
        out = tmp_path / f"m{machine}"
        assert pack_llava(path, root, out, "video-only", "--machine_id", str(machine), "--total_machine", "3") == 0
        seen.update({k: json.loads(s["json"]) for k, s in read_samples(str(out)).items()})
    assert sorted(seen) == [f"{i:09d}" for i in range(11)]
    for i, row in enumerate(rows):
        doc = seen[f"{i:09d}"]
        assert doc["meta"]["id"] == row["id"] and doc["conversations"] == row["conversations"], "video-only keeps them"


# --- stages 2 and 3 on instruction data ------------------------------------------------------

PATCHES = 4


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> str:
    from tests.synth_tokenizer import train_llama_like_tokenizer

    return train_llama_like_tokenizer(str(tmp_path_factory.mktemp("llava_tok") / "llama"))


def reference_ids(turns: list[dict], sp, placeholder: re.Pattern) -> tuple[list[int], list[int]]:
    """A slow reference of stage 2 for one sample: BOS; a human turn's text encoded piece by piece
    around its frame placeholders, each placeholder an image block (loss 0); a gpt turn's text
    then EOS (loss 1)."""
    vocab = sp.get_piece_size()
    block = [vocab + 1] + [vocab] * PATCHES + [vocab + 2]
    ids, mask = [sp.bos_id()], [0]
    for turn in turns:
        if turn["from"] == "human":
            parts = placeholder.split(turn["value"])
            turn_ids = []
            for i, part in enumerate(parts):
                if i:
                    turn_ids += block
                turn_ids += sp.encode(part) if part else []
            ids, mask = ids + turn_ids, mask + [0] * len(turn_ids)
        else:
            turn_ids = sp.encode(turn["value"]) + [sp.eos_id()]
            ids, mask = ids + turn_ids, mask + [1] * len(turn_ids)
    return ids, mask


@pytest.mark.parametrize("kind,sample_type", [("un", "conv"), ("kf", "kf")])
def test_stage2_puts_the_loss_on_every_gpt_turn_and_nowhere_else(tmp_path, root, llama, kind, sample_type):
    import sentencepiece as spm

    from vdp.cli import tokenize

    shards, tokens = tmp_path / "shards", tmp_path / "tokens"
    assert pack_llava(DATA, root, shards, kind) == 0
    stage1 = read_samples(str(shards))
    assert tokenize.main(["--dataset_path", str(shards), "--save_path", str(tokens), "--tokenizer", llama,
                          "--sample_type", sample_type, "--patches", str(PATCHES), "--max_len", "4000",
                          "--workers", "1", "--no_progress"]) == 0  # fmt: skip
    sp = spm.SentencePieceProcessor(model_file=llama)
    placeholder = re.compile(r"<image>") if kind == "un" else re.compile(r"<[IP]image>")
    seen = []
    for folder in sorted(os.listdir(tokens)):
        if not os.path.isdir(tokens / folder) or folder.startswith("."):
            continue
        for seq in read_samples(str(tokens / folder)).values():
            doc = json.loads(seq["json"])
            at = 0
            for n, (source, length) in enumerate(zip(doc["sources"], doc["sample_lengths"])):
                turns = json.loads(stage1[source]["json"])["conversations"]
                ids, mask = reference_ids(turns, sp, placeholder)
                if n:  # packed samples after the first drop their BOS
                    ids, mask = ids[1:], mask[1:]
                assert doc["input_ids"][at : at + length] == ids, source
                assert doc["loss_mask"][at : at + length] == mask, source
                at += length
                seen.append(source)
            assert at == len(doc["input_ids"])
    assert sorted(seen) == sorted(stage1)


def test_check_pair_shows_every_turn_with_the_frames(tmp_path, root, llama):
    from vdp.cli import check_pair

    shards, out = tmp_path / "shards", tmp_path / "check"
    assert pack_llava(DATA, root, shards, "un") == 0
    assert check_pair.main(["--dataset_path", str(shards), "--dataset_name", "llava", "--out", str(out),
                            "--dump", "10", "--workers", "1", "--no_progress"]) == 0  # fmt: skip
    import html as html_module

    report = html_module.unescape((out / "report.html").read_text())
    for row in published():
        for turn in row["conversations"]:
            text = turn["value"].replace("<image>", "").strip()
            assert f"{turn['from']}: " in report and text in report, text
    assert report.count("<img src=\"data:image/jpeg;base64,") >= 4 * len(published())
