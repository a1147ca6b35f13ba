"""Stage 3: check that every sample's json and media belong together, and dump a few for a human.

Examples (from the repo root):
  python index/check_pair.py --dataset_path out/kf --dataset_name webvid_kf --workers 8
  python index/check_pair.py --dataset_path tok/0-100 --dataset_name llava_kf --workers 8 \\
      --tokenizer llama2/tokenizer.model --dump 20 --out check/

Stage-1 shards: every named frame present and decodable, one placeholder per frame (with the
frame's I/P type for kf), video-only bytes open as a video. Stage-2 shards: every check of
index/main.py with full JPEG decodes, plus each packed sample's first and last token windows
decoded back to text (needs --tokenizer). With --dump N, N samples chosen by a fixed hash of
their names (the same on every run) are written to OUT/samples/ with OUT/report.html, which also
plots the sound samples' distributions (with stage 1's filter thresholds) and, with --duplicates
(vdp-dedup's NAME.duplicates.jsonl), shows its first N groups with thumbnails. Errors go
to OUT/NAME.errors.jsonl. --dataset_path, --out and --tokenizer may be s3:// or oss:// URLs;
--executor ray scans each tar as a Ray task. Exit 0 when everything is sound, 1 when something
was bad, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys

from vdp.cli.common import reports_command_errors
from vdp.cli.index_flags import context_of, prepare_scan, stage3_parser
from vdp.errors import UsageError
from vdp.index.report import figures_of, read_duplicates, write_report
from vdp.index.scan import merge_picks
from vdp.index.stage import finish, run_scan, scan_totals
from vdp.io import storage
from vdp.io.debris import remove_stale_partials
from vdp.run.accounting import run_about, summary_path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = stage3_parser(__doc__)
    p.add_argument(
        "--dump", type=int, default=0, metavar="N", help="write N samples and report.html to --out (default 0)"
    )
    p.add_argument(
        "--out",
        help="folder (or s3:// / oss:// prefix) for NAME.errors.jsonl, samples/ and report.html (default check_NAME)",
    )
    p.add_argument(
        "--duplicates", metavar="FILE", help="NAME.duplicates.jsonl (vdp-dedup): its first N groups in report.html"
    )
    p.add_argument("--window", type=int, default=48, help="tokens decoded at each end of a packed sample (default 48)")
    args = p.parse_args(argv)
    args.out = args.out or f"check_{args.dataset_name}"
    return args


@reports_command_errors("check_pair.py")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dump < 0 or args.window < 1:
        raise UsageError("--dump must be >= 0 and --window >= 1")
    if args.duplicates and not args.dump:
        raise UsageError("--duplicates shows its groups in report.html: give --dump N too")
    tars, options = prepare_scan(args, args.out, deep=True, dump=args.dump)
    duplicates = read_duplicates(args.duplicates, args.dump) if args.duplicates else None  # bad file: before the scan
    summary = summary_path(args.out, f"check_pair-{args.dataset_name}")  # OUT/summary-check_pair-NAME.json
    # what killed runs left of its own files (the report and dumped samples are rewritten whole)
    remove_stale_partials([storage.join(args.out, f"{args.dataset_name}.errors.jsonl"), storage.join(args.out, "report.html"),
                           summary])
    extra: tuple = ()  # (make_extra, its args): the decoder is built where the scan runs
    if args.tokenizer:
        from vdp.index.textwin import make_window_check

        extra = (make_window_check, (args.tokenizer, args.window))
    run = run_scan(tars, options, context_of(args), args.timeout, *extra, progress=not args.no_progress)
    if not args.tokenizer and any(s.tokens for s in run.scans):
        print("note: token windows not decoded: stage-2 samples found but no --tokenizer given", file=sys.stderr)
    totals = scan_totals(run)  # the report shows what the summary prints
    if args.dump:
        picks = merge_picks(run.scans, args.dump)
        figures = figures_of(run.scans, tars, options.check.max_len, args.dataset_path, duplicates)
        title = f"check_pair: {args.dataset_name}"
        path = write_report(args.out, title, totals, dict(run.reasons()), picks, figures)
        print(f"report: {path} ({len(picks)} samples)", file=sys.stderr)
    errors = storage.join(args.out, f"{args.dataset_name}.errors.jsonl")
    return finish(run, "check_pair", errors, totals, summary_path=summary, about=run_about(args, argv))

