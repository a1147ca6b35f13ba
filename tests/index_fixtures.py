"""Stage-1 and stage-2 shards written directly (via vdp.io.tario), sound and broken, for the stage-3 tests.

Nothing here runs pack.py or tokenize/main.py: the formats are built from their written
contract (issues 2 and 3), so the validator is tested against the contract itself.
"""

from __future__ import annotations

import io
import json
import os
import random

import cv2
import numpy as np

from vdp.io.tario import write_tar_atomically
from vdp.run.accounting import is_accounting

VOCAB = 32000
PATCH, START, END = VOCAB, VOCAB + 1, VOCAB + 2
BOS, EOS = 1, 2

Members = list[tuple[str, bytes]]


def jpeg(number: int, width: int = 64, height: int = 48) -> bytes:
    """A small JPEG with `number` painted on it (a human can tell frames apart in the report)."""
    img = np.full((height, width, 3), (40 + 17 * number) % 200, np.uint8)
    cv2.putText(img, str(number), (4, height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def jpeg_without_scan(data: bytes) -> bytes:
    """Headers intact, end marker present, no picture data: passes a header check, fails a decode."""
    return data[: data.index(b"\xff\xda")] + b"\xff\xd9"


def tiny_video(frames: int = 6) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            img = np.full((48, 64, 3), 20 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


# --- stage 1 ------------------------------------------------------------------------------------


def frames_sample(key: str, n: int = 4, kind: str = "un", caption: str | None = None, num_frames: int = 100) -> Members:
    """A stage-1 un/kf sample: json + n JPEGs, frame i at index 10*i, I frames at even positions (kf)."""
    caption = caption if caption is not None else f"a clip numbered {key}"
    frames = [
        {"name": str(i), "index": 10 * i, "t": round(0.4 * i, 3), "type": "I" if i % 2 == 0 else "P"} for i in range(n)
    ]
    if kind == "kf":
        prompt = "".join(f"<{f['type']}image>#{int(f['index'] / (num_frames - 1) * 100)}" for f in frames)
    else:
        prompt = "<image>" * n
    doc = {
        "caption": caption,
        "video_id": f"v{key}",
        "source": f"videos/v{key}.mp4",
        "width": 64,
        "height": 48,
        "fps": 25.0,
        "duration": num_frames / 25,
        "num_frames": num_frames,
        "frames": frames,
        "image": [f["name"] for f in frames],
        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": caption}],
    }
    return [(f"{key}.json", json.dumps(doc).encode())] + [(f"{key}.{i}.jpg", jpeg(int(key) * 10 + i)) for i in range(n)]


def video_sample(key: str, data: bytes, ext: str = "mp4") -> Members:
    doc = {"caption": f"video {key}", "video_id": f"v{key}", "source": f"v{key}.{ext}", "width": 64, "height": 48,
           "fps": 10.0, "duration": 0.6, "num_frames": 6}  # fmt: skip
    return [(f"{key}.json", json.dumps(doc).encode()), (f"{key}.{ext}", data)]


# --- stage 2 ------------------------------------------------------------------------------------


def _text_ids(text: str, encode) -> list[int]:
    if encode is not None:
        return list(encode(text))
    rng = random.Random(text)
    return [rng.randrange(3, VOCAB) for _ in range(max(1, len(text) // 4))]


def packed_ids(
    parts: list[tuple[str, int]], patches: int, encode=None, image_ids=(PATCH, START, END)
) -> tuple[list[int], list[int], list[int]]:
    """(input_ids, loss_mask, sample_lengths) of packed samples given as (caption, images).

    Each sample: BOS, the human turn (`describe` + an image block per image), the caption and
    EOS with loss; samples after the first drop their BOS, as stage 2 does.
    """
    patch, start, end = image_ids
    ids: list[int] = []
    mask: list[int] = []
    lengths = []
    for n, (caption, images) in enumerate(parts):
        human = _text_ids("describe", encode) + ([start] + [patch] * patches + [end]) * images
        gpt = _text_ids(caption, encode) + [EOS]
        s_ids, s_mask = [BOS] + human + gpt, [0] * (1 + len(human)) + [1] * len(gpt)
        if n:
            s_ids, s_mask = s_ids[1:], s_mask[1:]
        ids += s_ids
        mask += s_mask
        lengths.append(len(s_ids))
    return ids, mask, lengths


def sequence_sample(
    key: str,
    parts: list[tuple[str, int]],
    patches: int = 4,
    encode=None,
    ids_format: str = "json",
    image_ids=(PATCH, START, END),
) -> Members:
    ids, mask, lengths = packed_ids(parts, patches, encode, image_ids)
    images = sum(n for _, n in parts)
    doc: dict = {}
    if ids_format == "json":
        doc.update(input_ids=ids, loss_mask=mask)
    doc.update(
        sample_lengths=lengths,
        sources=[f"{i:09d}" for i in range(len(parts))],
        source_tars=["shard-0-0-10-0.tar"] * len(parts),
        image=[str(i) for i in range(images)],
    )
    members: Members = [(f"{key}.json", json.dumps(doc, separators=(",", ":")).encode())]
    if ids_format == "npy":
        members.append((f"{key}.input_ids.npy", npy(np.array(ids, np.int32))))
        members.append((f"{key}.loss_mask.npy", npy(np.array(mask, np.uint8))))
    return members + [(f"{key}.{i}.jpg", jpeg(i)) for i in range(images)]


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


# --- breaking samples ---------------------------------------------------------------------------


def edit_json(members: Members, fn) -> Members:
    """Apply fn to the parsed json of the sample (the first member) and write it back."""
    name, data = members[0]
    doc = json.loads(data)
    fn(doc)
    return [(name, json.dumps(doc).encode())] + members[1:]


def replace_member(members: Members, suffix: str, data: bytes | None) -> Members:
    """Replace (or with None drop) the member whose name ends with suffix."""
    out = []
    for name, old in members:
        if name.endswith(suffix):
            if data is not None:
                out.append((name, data))
        else:
            out.append((name, old))
    return out


def write_tar(path: str, samples: list[Members]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_tar_atomically(path, (m for sample in samples for m in sample))
    return path


def tree_files(folder: str) -> dict[str, bytes]:
    """Relative path -> bytes of every file below `folder`, but the accounting files (they carry times)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in (n for n in files if not is_accounting(n)):
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def energon_meta(files: dict[str, bytes]) -> dict[str, bytes]:
    """The files of a dataset folder that energon's metadata consists of (.nv-meta/, *.tar.idx)."""
    return {n: b for n, b in files.items() if n.endswith(".tar.idx") or n.startswith(".nv-meta/")}


def truncate(path: str, keep: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


def write_tokenized_dataset(folder: str, model: str, patches: int) -> None:
    """0.tar: three samples encoded with `model`; 1.tar: one sample whose ids are not the model's."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model)
    v = sp.get_piece_size()
    kw = dict(patches=patches, encode=sp.encode, image_ids=(v, v + 1, v + 2))
    parts = [("a cat runs on the grass", 2), ("a red car", 1)]
    write_tar(f"{folder}/0.tar", [sequence_sample(f"000000-{j:06d}", parts, **kw) for j in range(3)])
    write_tar(f"{folder}/1.tar", [sequence_sample("000001-000000", [("a dog", 1)], patches=patches)])


def train_sentencepiece(prefix: str, vocab_size: int = 300) -> str:
    """A tiny SentencePiece model trained at test time (<1 s), LLaMA-like ids: unk 0, bos 1, eos 2."""
    import sentencepiece as spm

    rng = random.Random(0)
    words = [
        "a",
        "cat",
        "dog",
        "runs",
        "on",
        "the",
        "grass",
        "red",
        "car",
        "drives",
        "down",
        "road",
        "clip",
        "describe",
    ]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=prefix, vocab_size=vocab_size, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2,
    )  # fmt: skip
    return prefix + ".model"
