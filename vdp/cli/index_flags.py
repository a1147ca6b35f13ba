"""Flags and their checks shared by vdp-index and vdp-check-pair (stage 3)."""

from __future__ import annotations

import argparse

from vdp.cli.common import add_executor_flags, add_run_flags
from vdp.errors import UsageError
from vdp.index.scan import ScanOptions
from vdp.index.stage import find_tars
from vdp.index.validate import CheckOptions, ImageTokenIds
from vdp.io import storage
from vdp.io.localcopy import local_copy
from vdp.run.runner import RunContext


def stage3_parser(doc: str) -> argparse.ArgumentParser:
    """A stage-3 command's parser: its docstring's first paragraph the description, the rest the
    epilog (examples, exit status), and the flags all of them share."""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_flags(p)
    return p


def add_common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset_path",
        required=True,
        help="folder of tars (stage-2 sequences or stage-1 shards), searched recursively",
    )
    p.add_argument("--dataset_name", required=True, help="NAME: names the output files")
    p.add_argument("--patches", type=int, default=256, help="<im_patch> tokens per image (default 256)")
    p.add_argument("--max_len", type=int, default=8000, help="longest allowed sequence (default 8000)")
    p.add_argument(
        "--vocab_size", type=int, default=32000, help="image token ids are vocab_size, +1, +2 (default 32000: LLaMA-2)"
    )
    p.add_argument(
        "--tokenizer",
        help="SentencePiece .model or Hugging Face folder (local, s3:// or oss://): takes the image token ids from it",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one tar may take before it counts as failed")
    add_executor_flags(p, "tar")
    add_run_flags(p, "tar")


def image_ids(args: argparse.Namespace) -> ImageTokenIds:
    """From --tokenizer when given (the ids stage 2 used), else vocab_size, +1, +2."""
    if not args.tokenizer:
        return ImageTokenIds.after_vocab(args.vocab_size)
    from vdp.text.tokens import IMAGE_END, IMAGE_PATCH, IMAGE_START, TokenizerLoadError, load_tokenizer

    try:
        sp = load_tokenizer(local_copy(args.tokenizer)).specials
    except TokenizerLoadError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"tokenizer not found: {args.tokenizer} ({e})") from None
    return ImageTokenIds(sp[IMAGE_PATCH], sp[IMAGE_START], sp[IMAGE_END])


def check_options(args: argparse.Namespace, deep: bool) -> CheckOptions:
    if args.patches < 1 or args.max_len < 1 or args.workers < 1:
        raise UsageError("--patches, --max_len and --workers must be positive")
    return CheckOptions(patches=args.patches, max_len=args.max_len, image_ids=image_ids(args), deep=deep)



def prepare_scan(args: argparse.Namespace, output: str, deep: bool, dump: int = 0) -> tuple[list[str], ScanOptions]:
    """What both stage-3 commands do before scanning: storage configured, the tars found, the
    flags checked and the output folder writable, or a UsageError before any work."""
    storage.configure(args.s3_endpoint)
    tars = find_tars(args.dataset_path)
    options = ScanOptions(check_options(args, deep=deep), root=args.dataset_path, dump=dump)
    storage.check_output_folder(output)
    return tars, options


def context_of(args: argparse.Namespace) -> RunContext:
    return RunContext(args.executor, args.workers, args.ray_address, args.s3_endpoint)
