"""A leader killed alone leaves its children in its process group; reaping kills them all.

This is what the fault schedules' daemon kill does (``batchinfer_testing.fault_schedule``):
``dagster-daemon`` started in a session of its own, SIGKILLed alone as the OOM killer would,
left its code server running until the seed ended; it is reaped now, and its run workers end
with their runs. A stand-in tree here (a leader with two sleeping children) shows the orphans
and their reaping, all or the ones picked; the seeds in ``test_fault_schedules.py`` check it on
the real daemon (``ScheduleResult.reaped``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from batchinfer_testing.processes import live_group_members, reap_process_group, stop_process_group

LEADER = """
import subprocess, sys, time
sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
children = [subprocess.Popen(sleeper) for _ in range(2)]
print(" ".join(str(child.pid) for child in children), flush=True)
time.sleep(600)
"""


def test_the_children_of_a_killed_leader_are_reaped() -> None:
    leader = subprocess.Popen(
        [sys.executable, "-c", LEADER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert leader.stdout is not None
        children = sorted(int(pid) for pid in leader.stdout.readline().split())
        assert len(children) == 2
        assert sorted(live_group_members(leader.pid)) == sorted([leader.pid, *children])

        os.kill(leader.pid, signal.SIGKILL)
        leader.wait()
        # The fault: the leader is gone, its children run on as orphans in its group.
        assert sorted(live_group_members(leader.pid)) == children

        # Only the members picked (the daemon's code server, say); the other runs on.
        first, second = children
        assert reap_process_group(leader.pid, which=lambda pid: pid == first) == [first]
        assert live_group_members(leader.pid) == [second]
        assert reap_process_group(leader.pid) == [second]
        assert live_group_members(leader.pid) == []
        assert reap_process_group(leader.pid) == []  # nothing left: returns at once
    finally:
        stop_process_group(leader, signal.SIGKILL, timeout=15)
