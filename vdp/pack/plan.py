"""Which records each machine takes and how they are cut into tars."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TarPlan:
    machine_id: int
    tar_id: int
    start: int  # global record index, inclusive
    end: int  # exclusive

    @property
    def name(self) -> str:
        return f"shard-{self.machine_id}-{self.start}-{self.end}-{self.tar_id}.tar"


def machine_range(
    num_records: int, machine_id: int, total_machine: int, start: int | None = None, end: int | None = None
) -> tuple[int, int]:
    """The contiguous record range [lo, hi) of one machine.

    `--start/--end` win over the machine split; both are clipped to the records there are.
    """
    if start is not None or end is not None:
        lo = 0 if start is None else start
        hi = num_records if end is None else end
        return max(0, min(lo, num_records)), max(0, min(hi, num_records))
    lo = machine_id * num_records // total_machine
    hi = (machine_id + 1) * num_records // total_machine
    return lo, hi


def plan_tars(lo: int, hi: int, samples_per_tar: int, machine_id: int) -> list[TarPlan]:
    """Cut [lo, hi) into tars of `samples_per_tar` records, numbered from 0 on this machine."""
    return [
        TarPlan(machine_id, tar_id, s, min(s + samples_per_tar, hi))
        for tar_id, s in enumerate(range(lo, hi, samples_per_tar))
    ]


def sample_key(index: int) -> str:
    """A record's global index as the 9-digit key unique across machines."""
    return f"{index:09d}"
