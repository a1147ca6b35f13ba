"""The plan command tells each machine's share, matching what pack.py then writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.pack_helpers import write_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plan_lists_each_machine_range_and_tars(tmp_path):
    rows = [{"video_path": f"v{i}.mp4", "value": "c"} for i in range(10)]
    m = write_manifest(str(tmp_path / "m.jsonl"), rows)
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "plan.py"), "--manifest", m,
                          "--total_machine", "3", "--samples_per_tar", "2", "--tars"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "10 records, 3 machines, 2 samples per tar"
    assert lines[1].startswith("machine 0: records [0, 3), 2 tars")
    assert "  shard-1-3-5-0.tar" in lines and "  shard-2-6-8-0.tar" in lines and "  shard-2-8-10-1.tar" in lines


def test_launch_range_runs_each_machine_id_on_its_host(tmp_path):
    """ssh is replaced by a local shim that records the host and runs the command here."""
    shim = tmp_path / "fake_ssh"
    shim.write_text('#!/usr/bin/env bash\nshift 2\necho "$1" >> "$LOG_DIR/hosts"\nhost=$1; shift\nbash -c "$1"\n')
    shim.chmod(0o755)
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("# lab machines\nnode-a\nnode-b\nnode-c\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "SSH": str(shim), "LOG_DIR": str(tmp_path), "REPO": str(tmp_path)}
    cmd = ["bash", os.path.join(ROOT, "scripts", "launch_range.sh"), str(hosts), "1", "2", "4", "--",
           "bash", "-c", f'echo "$@" > {out_dir}/args-$2', "x"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert sorted((tmp_path / "hosts").read_text().split()) == ["node-a", "node-b"]
    assert (out_dir / "args-1").read_text().strip() == "--machine_id 1 --total_machine 4"
    assert (out_dir / "args-2").read_text().strip() == "--machine_id 2 --total_machine 4"
    assert (tmp_path / "logs").is_dir()


def test_launch_range_reports_the_worst_exit(tmp_path):
    shim = tmp_path / "fake_ssh"
    shim.write_text('#!/usr/bin/env bash\nshift 3\nbash -c "$1"\n')
    shim.chmod(0o755)
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("a\nb\n")
    env = {**os.environ, "SSH": str(shim), "REPO": str(tmp_path)}
    cmd = ["bash", os.path.join(ROOT, "scripts", "launch_range.sh"), str(hosts), "0", "1", "2", "--",
           "bash", "-c", 'exit $2', "x"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 1  # machine 1 exits with its id
    assert "machine 1 exit 1" in proc.stdout


def test_plan_lists_each_machines_tokenize_shards_as_tokenize_writes_them(tmp_path):
    """Stage 2: machine m's tars, output folder and each shard's input tars; tokenize/main.py agrees."""
    from tests.stage1_fixtures import train_llama_like_tokenizer, write_stage1_corpus
    from tests.test_tokenize import output_sequences

    corpus = str(tmp_path / "corpus")
    names = [os.path.basename(p) for p in write_stage1_corpus(corpus, tars=5, samples_per_tar=2, frames=(1, 2))]
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "plan.py"), "--dataset_path", corpus,
                          "--shard_size", "2", "--total_machine", "2", "--tars"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "5 tars, [0, 5) taken, 2 tars per output shard, 2 machines"
    assert lines[1].startswith("machine 0: tars [0, 2) -> SAVE_PATH/0-2/, 1 shards")
    assert lines[3].startswith("machine 1: tars [2, 5) -> SAVE_PATH/2-5/, 2 shards")
    assert lines[4:] == [f"  shard_0.tar <- tars [2, 4): {names[2]} {names[3]}", f"  shard_1.tar <- tars [4, 5): {names[4]}"]

    # machine 1 as Slurm runs it: array task 1 of TOTAL=2
    model = train_llama_like_tokenizer(str(tmp_path / "llama"))
    env = {**os.environ, "SLURM_SUBMIT_DIR": ROOT, "SLURM_ARRAY_TASK_ID": "1", "TOTAL": "2", "SLURM_CPUS_PER_TASK": "1"}
    job = subprocess.run(["bash", os.path.join(ROOT, "scripts", "slurm_tokenize.sbatch"), "--dataset_path", corpus,
                          "--save_path", str(tmp_path / "tok"), "--tokenizer", model, "--sample_type", "un",
                          "--patches", "4", "--shard_size", "2"], capture_output=True, text=True, env=env)  # fmt: skip
    assert job.returncode == 0, job.stderr
    assert sorted(os.listdir(tmp_path / "tok")) == ["2-5", "errors.jsonl"]
    by_shard = {}
    for key, members in output_sequences(str(tmp_path / "tok")):
        by_shard.setdefault(key.split("-")[0], set()).update(json.loads(members["json"])["source_tars"])
    # keys start with the shard's first tar's place in the whole list, as in a one-machine run
    assert by_shard == {"000002": {names[2], names[3]}, "000004": {names[4]}}
