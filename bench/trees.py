#!/usr/bin/env python
"""Two checkouts side by side: the same three stages' commands in this tree and in an older
commit, timed and their outputs compared byte for byte (issue 11: a restructure changes no speed).

    .venv/bin/python bench/trees.py                          # against 4ea9cec (before the package layout)
    .venv/bin/python bench/trees.py --quick --repeat 1       # smoke run: 2 small videos, one run each
    .venv/bin/python bench/trees.py --old HEAD~3 --repeat 5  # any other commit

Checkouts: `old` is `git archive REV` of this repository unpacked into OUT/tree-SHA/ (no worktree
metadata; kept for the next run), its commands run there with PYTHONPATH=OUT/tree-SHA so that its
own `vdp` is imported rather than the editable install's; `new` is this working tree (uncommitted
changes included) run from the repo root without PYTHONPATH. Before anything is timed, each side
is checked to import its own `vdp`, and every command's --help runs once per side (bytecode
compiled, nothing left to warm up on one side only).

Inputs, made once and cached in OUT/inputs/: --videos painted H.264 videos (tests/synth.py;
default 8 x 640x360, 10 s, 25 fps, GOP 50, 2 B-frames), a jsonl manifest of them with made-up
captions, and a LLaMA-2-like SentencePiece model (tests/synth_tokenizer.py, padded to 32000).

Steps, each a whole command with --workers 1, old and new interleaved (the side that goes first
alternates between repetitions), best of --repeat by wall time, each run into a fresh folder
(OUT/runs/old/..., OUT/runs/new/...):

  pack un          pack.py --dataset jsonl --type un --samples_per_tar 4
  pack kf          pack.py ... --type kf
  pack video-only  pack.py ... --type video-only
  tokenize         tokenize/main.py on that side's kf shards (--shard_size 2 --patches 32 --max_len 2048)
  index            index/main.py --energon on that side's tokenized shards

Outputs of the last repetition are compared file by file (relative path, sha256) with each
side's run folder written as <RUN> in their bytes (the indexes hold absolute tar paths; the two
folder names have the same length, so pickles' length prefixes agree); JSON and JSONL files that
still differ are compared again without keys holding times (seconds, cpu_seconds, *_per_s, ...).

Output: a table (wall seconds, new/old, identical) and a line of CPU seconds (user+sys of the
command and its workers, from wait4) per step on stdout; all figures in OUT/trees.json.
Exit status: 0 every new/old <= --tolerance and all outputs identical, 1 otherwise, 2 a command
failed (or a side imported the wrong vdp).
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[0] = ROOT  # the repo root, not bench/ (bench/tokenize.py would shadow the stdlib's)

import argparse  # noqa: E402
import datetime  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402

from bench.clips import Timing, best, ensure_videos, size  # noqa: E402
from tests.synth import VideoSpec  # noqa: E402
from tests.synth_tokenizer import caption, train_llama_like_tokenizer  # noqa: E402

OLD_REV = "4ea9cec"  # the last commit before the package restructure (sys.path inserts, no pyproject)
SIDES = ("old", "new")  # same length: the run folders' paths have the same length in every output
# keys of the stage-2 state files (and any other JSON output) that hold times, not results
TIME_KEY = re.compile(r"(^|_)(seconds|time|elapsed|when)$|_per_s$")


class CommandFailed(Exception):
    pass


# --- the two sides --------------------------------------------------------------------------


@dataclass
class Side:
    name: str
    code: str  # the checkout the commands run in
    env: dict
    run_root: str  # its outputs: OUT/runs/NAME


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", ROOT, *args], check=True, capture_output=True, text=True).stdout.strip()


def checkout(rev: str, out: str, flag: str = "--old") -> tuple[str, str]:
    """(full sha, folder): `git archive REV` unpacked under OUT, reused when already there."""
    try:
        sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError as e:
        raise CommandFailed(f"{flag} {rev}: not a commit of {ROOT}: {e.stderr.strip()}") from e
    folder = os.path.join(out, f"tree-{sha[:12]}")
    if not os.path.isdir(folder):
        part = folder + ".part"
        shutil.rmtree(part, ignore_errors=True)
        os.makedirs(part)
        archive = subprocess.Popen(["git", "-C", ROOT, "archive", sha], stdout=subprocess.PIPE)
        untar = subprocess.run(["tar", "-x", "-C", part], stdin=archive.stdout)
        archive.stdout.close()
        if archive.wait() != 0 or untar.returncode != 0:
            raise CommandFailed(f"git archive {sha} | tar -x -C {part} failed")
        os.replace(part, folder)
    return sha, folder


def make_sides(old_code: str, new_code: str | None, out: str) -> dict[str, Side]:
    """new_code None: this working tree, whose vdp the editable install already imports."""
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    new = Side("new", ROOT, base, os.path.join(out, "runs", "new"))
    if new_code is not None:
        new = Side("new", new_code, {**base, "PYTHONPATH": new_code}, os.path.join(out, "runs", "new"))
    return {"old": Side("old", old_code, {**base, "PYTHONPATH": old_code}, os.path.join(out, "runs", "old")), "new": new}


def check_imports(sides: dict[str, Side], neutral: str) -> dict[str, str]:
    """Each side's `vdp` must come from its own checkout, from its folder and from elsewhere
    (there the environment alone decides, as for tokenize/main.py and index/main.py)."""
    found = {}
    for side in sides.values():
        for cwd in (side.code, neutral):
            proc = subprocess.run([sys.executable, "-c", "import vdp; print(vdp.__file__)"], cwd=cwd, env=side.env,
                                  capture_output=True, text=True)  # fmt: skip
            path = os.path.realpath(proc.stdout.strip()) if proc.returncode == 0 else ""
            if not path.startswith(os.path.realpath(side.code) + os.sep):
                raise CommandFailed(
                    f"the {side.name} side (PYTHONPATH={side.env.get('PYTHONPATH', '<unset>')}, cwd {cwd}) imports "
                    f"vdp from {path or proc.stderr.strip()[-300:]!r}, not from its checkout {side.code}"
                )
            found[side.name] = path
    return found


# --- inputs ---------------------------------------------------------------------------------


def make_inputs(a: argparse.Namespace, folder: str) -> tuple[str, str, str, int]:
    """(manifest, video root, tokenizer model, records), videos and model cached."""
    w, h = a.size
    spec = VideoSpec(num_frames=round(a.seconds * a.fps), width=w, height=h, fps=a.fps, gop=a.gop, bframes=a.bframes)
    video_root = os.path.join(folder, "videos")
    videos = ensure_videos(video_root, a.videos, spec)
    manifest = os.path.join(folder, f"clips-{a.videos}-{os.path.basename(videos[0])[3:-4]}.jsonl")
    with open(manifest, "w") as f:
        for i, v in enumerate(videos):
            text = caption(random.Random(i), 3, 30)
            f.write(json.dumps({"video_path": os.path.basename(v), "value": text}) + "\n")
    model = os.path.join(folder, "llama_like.model")
    if not os.path.exists(model):
        print("training the tokenizer model ...", flush=True)
        made = train_llama_like_tokenizer(os.path.join(folder, "llama_like.part"), vocab_size=32000)
        os.replace(made, model)
    for v in videos:  # into the page cache before either side reads them
        with open(v, "rb") as f:
            while f.read(1 << 20):
                pass
    return manifest, video_root, model, len(videos)


# --- steps ------------------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    args: list[str]  # after the python executable; paths under the run root as {run}
    # folders under the run root it writes (files left as an earlier step wrote them are not its own)
    outputs: tuple[str, ...]


def make_steps(manifest: str, video_root: str, model: str) -> list[Step]:
    def pack(kind: str) -> Step:
        return Step(f"pack {kind}", ["pack.py", "--dataset", "jsonl", "--manifest", manifest, "--video_root", video_root,
                                     "--type", kind, "--save_path", f"{{run}}/{kind}", "--samples_per_tar", "4",
                                     "--workers", "1", "--no_progress"], (kind,))  # fmt: skip

    tokens = ["--patches", "32", "--max_len", "2048", "--tokenizer", model, "--workers", "1"]
    return [
        pack("un"),
        pack("kf"),
        pack("video-only"),
        Step("tokenize", ["tokenize/main.py", "--dataset_path", "{run}/kf", "--save_path", "{run}/tokens",
                          "--sample_type", "kf", "--shard_size", "2", "--no_progress", *tokens], ("tokens",)),
        # --energon also writes .nv-meta/ and *.tar.idx into the tokens folder, made afresh by
        # the tokenize step just before in every repetition
        Step("index", ["index/main.py", "--dataset_path", "{run}/tokens", "--dataset_name", "bench",
                       "--output", "{run}/index", "--energon", "--no_progress", *tokens], ("index", "tokens")),
    ]  # fmt: skip


def run_command(cmd: list[str], cwd: str, env: dict, log: str) -> Timing:
    """One whole command: wall seconds, and CPU seconds of it and its workers from wait4."""
    with open(log, "wb") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        with open(log, errors="replace") as f:
            tail = f.read()[-1500:]
        raise CommandFailed(f"exit {code} in {cwd}: {' '.join(cmd)}\n--- {log} (end) ---\n{tail}")
    return Timing(wall, usage.ru_utime + usage.ru_stime)


def run_step(step: Step, side: Side, logs: str) -> Timing:
    for folder in step.outputs[:1]:  # its own output folder, fresh (pack.py would resume finished tars)
        shutil.rmtree(os.path.join(side.run_root, folder), ignore_errors=True)
    cmd = [sys.executable, *(x.replace("{run}", side.run_root) for x in step.args)]
    return run_command(cmd, side.code, side.env, os.path.join(logs, f"{side.name}-{step.name.replace(' ', '-')}.log"))


# --- identity -------------------------------------------------------------------------------


def without_times(value):
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if not TIME_KEY.search(k)}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def relaxed_digest(name: str, data: bytes) -> str | None:
    """sha256 of a JSON / JSONL file's content with its time keys dropped, else None."""
    try:
        if name.endswith(".jsonl"):
            docs = [without_times(json.loads(line)) for line in data.splitlines() if line.strip()]
        elif name.endswith(".json"):
            docs = without_times(json.loads(data))
        else:
            return None
    except ValueError:
        return None
    return hashlib.sha256(json.dumps(docs, sort_keys=True).encode()).hexdigest()


def digest_tree(run_root: str, folders: tuple[str, ...]) -> dict[str, tuple[str, str | None]]:
    """{path relative to the run root: (sha256, sha256 without time keys)} of every file, the
    run root's own path in the bytes replaced by <RUN>."""
    root = run_root.encode()
    found = {}
    for folder in folders:
        for dirpath, _, files in os.walk(os.path.join(run_root, folder)):
            for name in files:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    data = f.read().replace(root, b"<RUN>")
                found[os.path.relpath(path, run_root)] = (hashlib.sha256(data).hexdigest(), relaxed_digest(name, data))
    return found


def own_files(tree: dict, earlier: list[dict]) -> dict:
    """The files a step wrote: those of its folders not left as they were by an earlier step."""
    return {k: v for k, v in tree.items() if not any(e.get(k) == v for e in earlier)}


@dataclass
class Identity:
    identical: bool
    files: int
    timing_keys_ignored: list[str]  # JSON files equal only without their time keys
    differs: list[str]  # "path" (content), "path (old only)", "path (new only)"

    def cell(self) -> str:
        if self.identical:
            return "yes" + ("*" if self.timing_keys_ignored else "")
        shown = ", ".join(self.differs[:3])
        return f"differs: {shown}" + (f" (+{len(self.differs) - 3})" if len(self.differs) > 3 else "")


def compare(old: dict, new: dict) -> Identity:
    ignored, differs = [], []
    for path in sorted(old.keys() | new.keys()):
        if path not in new:
            differs.append(f"{path} (old only)")
        elif path not in old:
            differs.append(f"{path} (new only)")
        elif old[path][0] != new[path][0]:
            if old[path][1] is not None and old[path][1] == new[path][1]:
                ignored.append(path)
            else:
                differs.append(path)
    return Identity(not differs, len(old.keys() | new.keys()), ignored, differs)


# --- the run --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/trees.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__[__doc__.index("\n\n") + 2:],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--old", default=OLD_REV, help=f"the older commit (default {OLD_REV})")
    p.add_argument("--new", default=None, metavar="REV",
                   help="measure this commit instead of the working tree (checked out like --old)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench_out", "trees"),
                   help="checkout, inputs, outputs, logs and trees.json go here (default bench_out/trees)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="smoke run: 2 videos of 3 s at 320x180")
    p.add_argument("--repeat", type=int, default=3, help="runs of each command per side, interleaved; the best counts")
    p.add_argument("--tolerance", type=float, default=1.10, help="largest new/old wall-time ratio that passes")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0, help="length of every video")
    p.add_argument("--size", type=size, default=(640, 360), help="WxH (default 640x360)")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--gop", type=int, default=50, help="frames from one key frame to the next")
    p.add_argument("--bframes", type=int, default=2)
    return p


def print_table(rows: list[dict], tolerance: float) -> None:
    head = f"{'step':<16} {'old s':>7} {'new s':>7} {'new/old':>7}  identical"
    print(head)
    print("-" * len(head))
    for r in rows:
        flag = "" if r["ratio"] <= tolerance else "  (over)"
        old, new = r["old"]["wall"], r["new"]["wall"]
        print(f"{r['step']:<16} {old:>7.2f} {new:>7.2f} {r['ratio']:>7.2f}  {r['cell']}{flag}")
    print("cpu s (user+sys of the command and its workers, wait4; the best runs):")
    for r in rows:
        old, new = r["old"]["cpu"], r["new"]["cpu"]
        print(f"  {r['step']:<16} old {old:>6.2f}  new {new:>6.2f}  new/old {r['cpu_ratio']:.2f}")


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.quick:
        a.videos, a.seconds, a.size = 2, 3.0, (320, 180)
    started = time.perf_counter()
    out = os.path.realpath(a.out)
    os.makedirs(out, exist_ok=True)
    try:
        sha, old_code = checkout(a.old, out)
        new_sha, new_code = checkout(a.new, out, "--new") if a.new else ("", None)
        sides = make_sides(old_code, new_code, out)
        vdp_paths = check_imports(sides, out)
    except CommandFailed as e:
        print(f"bench/trees.py: {e}", file=sys.stderr)
        return 2
    head, dirty = git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    print(f"old: {a.old} = {sha[:12]} in {old_code} (vdp: {vdp_paths['old']})")
    if a.new:
        print(f"new: {a.new} = {new_sha[:12]} in {new_code} (vdp: {vdp_paths['new']})")
    else:
        print(f"new: this tree, HEAD {head[:12]}{' + uncommitted changes' if dirty else ''} (vdp: {vdp_paths['new']})")
    manifest, video_root, model, records = make_inputs(a, os.path.join(out, "inputs"))
    steps = make_steps(manifest, video_root, model)
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    load_start = round(os.getloadavg()[0], 2)
    timings: dict[str, dict[str, list[Timing]]] = {s.name: {n: [] for n in SIDES} for s in steps}
    trees: dict[str, dict[str, dict]] = {n: {} for n in SIDES}  # last repetition: step -> its files
    try:
        for side in sides.values():  # bytecode compiled, modules read once: no side warms up in the timed runs
            for script in ("pack.py", "tokenize/main.py", "index/main.py"):
                run_command([sys.executable, script, "--help"], side.code, side.env, os.path.join(logs, "help.log"))
        print(f"{records} records ({a.videos} x {a.seconds:g} s {a.size[0]}x{a.size[1]} H.264, {a.fps} fps, GOP {a.gop}, "
              f"{a.bframes} B-frames); every command --workers 1, best of {a.repeat}", flush=True)  # fmt: skip
        for r in range(a.repeat):
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            print(f"  run {r + 1}/{a.repeat}: " + ", ".join(s.name for s in steps) + f" ({' then '.join(order)})",
                  flush=True)  # fmt: skip
            for step in steps:
                for name in order:
                    timings[step.name][name].append(run_step(step, sides[name], logs))
                    if r == a.repeat - 1:
                        tree = digest_tree(sides[name].run_root, step.outputs)
                        trees[name][step.name] = own_files(tree, list(trees[name].values()))
    except CommandFailed as e:
        print(f"bench/trees.py: a command failed: {e}", file=sys.stderr)
        return 2
    load_end = round(os.getloadavg()[0], 2)

    rows = []
    for step in steps:
        old, new = best(timings[step.name]["old"]), best(timings[step.name]["new"])
        same = compare(trees["old"][step.name], trees["new"][step.name])
        rows.append({
            "step": step.name, "command": [x.replace("{run}", "<RUN>") for x in step.args],
            "old": asdict(old), "new": asdict(new),
            "ratio": round(new.wall / old.wall, 3), "cpu_ratio": round(new.cpu / old.cpu, 3) if old.cpu else None,
            "identity": asdict(same), "cell": same.cell(),
            "all_runs": {n: [asdict(t) for t in timings[step.name][n]] for n in SIDES},
        })  # fmt: skip
    print()
    print_table(rows, a.tolerance)
    ignored = sorted({p for r in rows for p in r["identity"]["timing_keys_ignored"]})
    if ignored:
        print(f"* equal once keys holding times are dropped: {', '.join(ignored)}")
    fast = all(r["ratio"] <= a.tolerance for r in rows)
    same = all(r["identity"]["identical"] for r in rows)
    print(f"new/old <= {a.tolerance:.2f} in every step: {'PASS' if fast else 'FAIL'}; "
          f"outputs identical: {'PASS' if same else 'FAIL'}")  # fmt: skip
    print(f"note: outputs compared file by file (sha256), each side's run folder written as <RUN>; load avg 1 min "
          f"{load_start} at start, {load_end} at end; logs in {logs}")  # fmt: skip
    if a.quick:
        print("note: --quick runs two tiny videos: start-up dominates, the ratios are a smoke test")
    result = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: v for k, v in vars(a).items() if k != "out"},
        "old": {"rev": a.old, "sha": sha, "checkout": old_code, "vdp": vdp_paths["old"]},
        "new": {"head": head, "uncommitted_changes": dirty, "checkout": ROOT, "vdp": vdp_paths["new"]},
        "records": records,
        "steps": rows,
        "passed": {"speed": fast, "identical": same},
        "load_avg": [load_start, load_end],
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    path = os.path.join(out, "trees.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"results: {path} (bench took {result['bench_seconds']} s)")
    return 0 if fast and same else 1


if __name__ == "__main__":
    sys.exit(main())
