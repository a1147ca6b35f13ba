"""An output location that cannot take the outputs (a path through a file, a missing bucket) is a
one-line usage error naming it, exit 2, before any work: never a traceback, never a scan whose
results cannot be written."""

from __future__ import annotations

import json

import pytest

from tests.s3_fixtures import make_bucket
from tests.stage1_fixtures import train_llama_like_tokenizer, write_stage1_corpus
from tests.test_tokenize import tokenize_main
from vdp.cli import check_pair, pack
from vdp.cli import index as index_main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("outerr")
    corpus = str(root / "corpus")
    write_stage1_corpus(corpus, tars=1, samples_per_tar=2, frames=(1, 2))
    manifest = root / "clips.jsonl"
    manifest.write_text(json.dumps({"video_path": "missing.mp4", "value": "a clip"}) + "\n")
    blocker = root / "a-file"
    blocker.write_text("not a folder")
    return {"corpus": corpus, "manifest": str(manifest), "model": train_llama_like_tokenizer(str(root / "llama")),
            "blocker": str(blocker)}  # fmt: skip


def run_command(name: str, inputs: dict, out: str, *extra: str) -> int:
    """The command's exit status; pack.py reports usage errors through argparse (SystemExit 2)."""
    src, model = inputs["corpus"], inputs["model"]
    if name == "pack":
        argv = ["--manifest", inputs["manifest"], "--type", "un", "--save_path", out, "--no_progress", *extra]
        try:
            return pack.main(argv)
        except SystemExit as e:
            return int(e.code)
    if name == "tokenize":
        argv = ["--dataset_path", src, "--save_path", out, "--tokenizer", model, "--sample_type", "un", *extra]
        return tokenize_main.main([*argv, "--no_progress"])
    if name == "index":
        return index_main.main(["--dataset_path", src, "--dataset_name", "x", "--output", out, *extra])
    return check_pair.main(["--dataset_path", src, "--dataset_name", "x", "--out", out, *extra])


COMMANDS = ["pack", "tokenize", "index", "check_pair"]


@pytest.mark.parametrize("name", COMMANDS)
def test_an_output_path_through_a_file_is_a_usage_error(name, inputs, capsys):
    out = f"{inputs['blocker']}/out"
    assert run_command(name, inputs, out) == 2
    err = capsys.readouterr().err
    assert f"cannot write to {out}: NotADirectoryError" in err and "Traceback" not in err


@pytest.mark.parametrize("name", COMMANDS)
def test_a_missing_bucket_is_a_usage_error(name, inputs, s3_env, capsys):
    make_bucket(s3_env, "present")  # the endpoint answers; only the output's bucket is missing
    out = "s3://no-such-bucket/out"
    assert run_command(name, inputs, out, "--s3_endpoint", s3_env) == 2
    err = capsys.readouterr().err
    assert f"bucket not found: s3://no-such-bucket (for {out})" in err and "Traceback" not in err


def test_oss_bucket_is_checked_too(inputs, s3_env, monkeypatch, capsys):
    """oss:// through oss2; moto, answering in OSS's XML dialect, stands in for OSS."""
    from tests.s3_fixtures import faulty_proxy
    from vdp.io import storage

    make_bucket(s3_env, "oss-present")
    with faulty_proxy(s3_env, failure_rate=0.0, strip_namespace=True) as (proxy, _):
        for k, v in {"OSS_ENDPOINT": proxy, "OSS_ACCESS_KEY_ID": "testing", "OSS_ACCESS_KEY_SECRET": "testing"}.items():
            monkeypatch.setenv(k, v)
        storage.configure(None)
        assert run_command("index", inputs, "oss://no-such-bucket/idx") == 2
        assert "bucket not found: oss://no-such-bucket (for oss://no-such-bucket/idx)" in capsys.readouterr().err
        assert run_command("index", inputs, "oss://oss-present/idx") == 0
