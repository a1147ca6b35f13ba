"""Stage 2: stage-1 frame shards -> LLaMA-2 token sequences packed to --max_len, for Megatron.

The stage-1 tars in --dataset_path are sorted by name and [--start, --end) of that list is
taken; each group of --shard_size consecutive tars becomes OUT/{start}-{end}/shard_{g}.tar,
written atomically. Samples that cannot be tokenized are listed in OUT/errors.jsonl.
Rerunning the same command skips finished shards. Paths may be local or s3:// / oss://.
"""

from __future__ import annotations

import argparse
import json
import os

from vdp.cli.common import add_executor_flags, add_run_flags, reports_command_errors
from vdp.errors import (
    EXIT_OK,
    EXIT_SOME_ERRORS,
    UsageError,
    error_entry,
    reason_counts,
)
from vdp.io import storage
from vdp.io.debris import remove_stale_partials
from vdp.io.tario import write_bytes_atomically, write_errors_file
from vdp.run.accounting import run_about, stats_path, summary_path
from vdp.run.pool import WorkFailure
from vdp.run.progress import Stopwatch, print_summary, progress_bar
from vdp.run.runner import RunContext, Work, run_units
from vdp.text.tokens import PLACEHOLDERS, TokenizerLoadError, load_tokenizer, tokenizer_problem
from vdp.tokenize.packing import PACKERS
from vdp.tokenize.stage import (
    STATE_DIR,
    GroupJob,
    GroupResult,
    TokenizeOptions,
    collect_errors,
    init_worker,
    is_done,
    list_input_tars,
    plan_groups,
    read_state,
    run_group,
    shard_path,
    state_path,
    tar_range,
)

EXAMPLES = """
examples:
  # tars 0..99 of a stage-1 folder, 10 tars per output shard, 8 processes
  python tokenize/main.py --dataset_path out/un --save_path tokens/ --tokenizer Llama-2-7b-hf/tokenizer.model \\
      --sample_type un --start 0 --end 100 --shard_size 10 --workers 8

  # keyframe samples, a Hugging Face tokenizer folder, ids as .npy members, 64 patches per image
  python tokenize/main.py --dataset_path out/kf --save_path tokens/ --tokenizer Llama-2-7b-hf \\
      --sample_type kf --shard_size 10 --patches 64 --ids_format npy

  # machine 3 of 8 takes its eighth of the groups of tars 0..799 (scripts/plan.py lists every machine's)
  python tokenize/main.py --dataset_path /data/un --save_path /data/tokens --tokenizer tokenizer.model \\
      --sample_type un --end 800 --shard_size 10 --machine_id 3 --total_machine 8

  # the seed's in-order packing instead of best-fit decreasing
  python tokenize/main.py --dataset_path out/un --save_path tokens/ --tokenizer tokenizer.model \\
      --sample_type un --packing greedy

  # everything in a bucket (an S3-compatible store), each output shard a Ray task on a running cluster
  python tokenize/main.py --dataset_path s3://bucket/shards/kf --save_path s3://bucket/tokens \\
      --tokenizer s3://bucket/llama2/tokenizer.model --sample_type kf --shard_size 10 \\
      --s3_endpoint https://tos-s3-cn-beijing.volces.com --executor ray --ray_address auto

output: OUT/{start}-{end}/shard_{g}.tar, one sample per packed sequence: {key}.json with input_ids,
loss_mask, sample_lengths, sources, source_tars, image; {key}.{i}.jpg the frames in order.
exit status: 0 every sample packed, 1 some went to OUT/errors.jsonl (or a worker failed), 2 bad usage,
3 an output could not be written (disk full, read-only folder): fix that and rerun.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Tokenize stage-1 frame shards with LLaMA-2 and pack them into sequences of at most --max_len tokens.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dataset_path", required=True, help="folder (or s3:// / oss:// prefix) of stage-1 tars, sorted by name"
    )
    p.add_argument("--save_path", required=True, help="output folder (or s3:// / oss:// prefix)")
    p.add_argument(
        "--tokenizer",
        required=True,
        help="SentencePiece tokenizer.model, or a Hugging Face tokenizer folder (local, s3:// or oss://)",
    )
    p.add_argument(
        "--sample_type", required=True, choices=sorted(PLACEHOLDERS), help="kf: <Iimage>/<Pimage>; un, fps, conv: <image>"
    )
    p.add_argument("--start", type=int, default=0, help="first tar of the sorted list (default 0)")
    p.add_argument("--end", type=int, default=None, help="tar to stop before (default: all)")
    p.add_argument("--shard_size", type=int, default=50, help="input tars per output shard (default 50)")
    p.add_argument(
        "--machine_id", type=int, default=0, help="this machine's share of [--start, --end): whole groups (default 0)"
    )
    p.add_argument("--total_machine", type=int, default=1, help="machines sharing the range (default 1)")
    p.add_argument("--max_len", type=int, default=8000, help="tokens per packed sequence at most (default 8000)")
    p.add_argument("--patches", type=int, default=256, help="<im_patch> tokens per image (default 256)")
    p.add_argument(
        "--packing",
        default="bfd",
        choices=sorted(PACKERS),
        help="bfd: best-fit decreasing (default); greedy: the seed's in-order filling",
    )
    p.add_argument("--pack_buffer", type=int, default=1000, help="samples in the bfd window (default 1000)")
    p.add_argument(
        "--max_side", type=int, default=1280, help="frames with a longer side are shrunk, aspect kept (0: never)"
    )
    p.add_argument(
        "--jpeg_quality", type=int, default=95, help="quality of shrunk frames (others are copied untouched)"
    )
    p.add_argument(
        "--ids_format",
        default="json",
        choices=["json", "npy"],
        help="input_ids/loss_mask as JSON lists or int32/uint8 .npy members",
    )
    p.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds one output shard may take before it counts as failed"
    )
    add_executor_flags(p, "output shard")
    add_run_flags(p, "group of tars")
    return p


def check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    for flag in ("workers", "shard_size", "patches", "pack_buffer", "max_len"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag} must be at least 1")
    if a.max_side < 0 or a.start < 0 or (a.end is not None and a.end < a.start):
        p.error("--max_side and --start must be >= 0, and --end >= --start")
    if not 1 <= a.jpeg_quality <= 100:
        p.error("--jpeg_quality must be in 1..100")
    if a.total_machine < 1 or not 0 <= a.machine_id < a.total_machine:
        p.error(f"--machine_id must be in 0..{a.total_machine - 1} (got {a.machine_id})")
    if not storage.is_remote(a.dataset_path) and not os.path.isdir(a.dataset_path):
        p.error(f"--dataset_path is not a folder: {a.dataset_path}")


def check_tokenizer(path: str) -> None:
    """Load the tokenizer and refuse one that cannot give right ids (no vocabulary, ids that collide)."""
    problem = tokenizer_problem(load_tokenizer(path))
    if problem:
        raise TokenizerLoadError(f"tokenizer {path} cannot be right: {problem}")


def find_input_tars(dataset_path: str) -> list[str]:
    """The sorted input tars; a remote prefix that cannot be listed or holds none is a usage error."""
    try:
        tars = list_input_tars(dataset_path)
    except Exception as e:  # a bucket, credential or endpoint problem: the user's to fix
        raise UsageError(f"cannot list {dataset_path}: {type(e).__name__}: {e}") from None
    if not tars and storage.is_remote(dataset_path):
        raise UsageError(f"no .tar files under {dataset_path}")
    return tars


def flags_path(out_dir: str) -> str:
    return storage.join(out_dir, STATE_DIR, "flags.json")


def remove_debris(out_dir: str, jobs: list[GroupJob], errors_path: str, machine_id: int) -> None:
    """What killed runs left of this machine's files: its shards, their stats and state, its flags
    and summary; and of the errors file every machine rewrites, only temp files whose writer is gone."""
    owned = [p for j in jobs for p in (shard_path(j), stats_path(shard_path(j)), state_path(j))]
    remove_stale_partials([*owned, flags_path(out_dir), summary_path(out_dir, machine_id)], shared=[errors_path])


def check_same_flags(out_dir: str, flags: dict) -> str:
    """A rerun into the same range folder must use the same flags, or resumed shards would mix outputs."""
    path = flags_path(out_dir)
    if storage.exists(path):
        before = json.loads(storage.read_bytes(path))
        if before != flags:
            diff = sorted(k for k in set(before) | set(flags) if before.get(k) != flags.get(k))
            return (
                f"{out_dir} holds shards made with other flags ({', '.join(diff)}): use a new --save_path or delete it"
            )
    else:
        write_bytes_atomically(path, json.dumps(flags, sort_keys=True).encode())
    return ""


def summarize(results: list[GroupResult], max_len: int) -> dict:
    """The figures of the summary line over finished shards."""
    sequences = sum(r.sequences for r in results)
    tokens = sum(r.tokens for r in results)
    packed = sum(r.samples for r in results)
    return {
        "samples_in": packed + sum(r.rejected for r in results),
        "samples_packed": packed,
        "sequences_out": sequences,
        "fill_pct": 100.0 * tokens / (sequences * max_len) if sequences else 0.0,
        "lower_bound": sum(r.lower_bound for r in results),
    }


def options_of(args: argparse.Namespace) -> TokenizeOptions:
    return TokenizeOptions(
        tokenizer=storage.absolute(args.tokenizer),
        sample_type=args.sample_type,
        patches=args.patches,
        max_len=args.max_len,
        packing=args.packing,
        pack_buffer=args.pack_buffer,
        max_side=args.max_side,
        jpeg_quality=args.jpeg_quality,
        ids_format=args.ids_format,
    )


def run_todo(todo: list[GroupJob], options: TokenizeOptions, args: argparse.Namespace) -> tuple[list, list[dict]]:
    """Run the unfinished groups; (their results, an error row per group that failed)."""
    bar = (
        None
        if args.no_progress
        else progress_bar(sum(len(j.tars) for j in todo), "tar", f"tokenize {args.sample_type}")
    )
    work = Work(run_group, args.timeout, init_worker, (options,))
    context = RunContext(args.executor, args.workers, args.ray_address, args.s3_endpoint)
    counts = {"sequences": 0, "errors": 0}  # the bar's figures, over groups in the order they finish

    def tick(job: GroupJob, result: GroupResult | WorkFailure) -> None:
        if isinstance(result, WorkFailure):
            counts["errors"] += 1
        else:
            counts["sequences"] += result.sequences
            counts["errors"] += len(result.errors)
        bar.update(len(job.tars))
        bar.set_postfix(**counts)

    fresh: list[GroupResult] = []
    failures: list[dict] = []
    for job, result in zip(todo, run_units(work, todo, context, tick if bar else None)):
        if isinstance(result, WorkFailure):
            failures.append(error_entry(f"shard_{job.index}", ",".join(job.names), f"worker failed: {result.reason}"))
        else:
            fresh.append(result)
    if bar:
        bar.close()
    return fresh, failures


@reports_command_errors("tokenize/main.py")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    storage.configure(args.s3_endpoint)
    clock = Stopwatch()
    check_tokenizer(args.tokenizer)  # fail before any work; forked workers inherit it
    tars = find_input_tars(args.dataset_path)
    storage.check_output_folder(args.save_path)

    start, end = tar_range(len(tars), args.start, args.end, args.shard_size, args.machine_id, args.total_machine)
    out_dir = storage.join(args.save_path, f"{start}-{end}")
    jobs = plan_groups(tars, args.dataset_path, start, end, args.shard_size, out_dir)
    options = options_of(args)
    flags = {"dataset_path": storage.absolute(args.dataset_path), "shard_size": args.shard_size, **options.__dict__}
    errors_path = storage.join(args.save_path, "errors.jsonl")
    remove_debris(out_dir, jobs, errors_path, args.machine_id)
    problem = check_same_flags(out_dir, flags)
    if problem:
        raise UsageError(problem)

    todo = [j for j in jobs if not is_done(j)]
    resumed = [read_state(state_path(j)) for j in jobs if j not in todo]
    fresh, failures = run_todo(todo, options, args)
    finished = sorted(resumed + fresh, key=lambda r: r.index)
    errors = collect_errors(args.save_path) + failures
    write_errors_file(errors_path, errors)
    seconds = clock.seconds
    range_errors = [e for r in finished for e in r.errors] + failures
    fields = {"tars": len(tars[start:end]), **summarize(finished, args.max_len)}
    fields.update(
        errors=len(range_errors),
        shards_written=len(fresh),
        shards_resumed=len(resumed),
        seconds=seconds,
        tokens_per_s=sum(r.tokens for r in fresh) / seconds if seconds > 0 else 0.0,
    )
    print_summary("tokenize", fields, reason_counts(range_errors), save_to=summary_path(out_dir, args.machine_id),
                  about=run_about(args, argv))
    print(f"shards: {storage.absolute(out_dir)}  errors: {storage.absolute(errors_path)}", flush=True)
    return EXIT_SOME_ERRORS if range_errors else EXIT_OK

