"""Another frontend's placements count in a replica's load until a report of it counts them."""
from __future__ import annotations

import time

from shunter.router.routing import LoadReport
from shunter.router.shared_state.remote_pending import RemotePending


def test_a_heard_placement_counts_until_a_report_takes_it():
    remote, report = RemotePending(), LoadReport("r0")
    remote.heard(report, "a", 5)
    remote.heard(report, "b", 3)
    assert report.pending_blocks == 8
    report.pending_blocks = 0  # a fresh report applied: apply_stats zeroes it
    remote.reported(report, ["a"], fresh=True)
    assert report.pending_blocks == 3  # b is still not in any report
    remote.reported(report, [], fresh=False)  # a poll that repeats the old stats changes nothing
    assert report.pending_blocks == 3
    remote.reported(report, ["b"], fresh=False)
    assert report.pending_blocks == 0


def test_a_placement_heard_after_its_report_is_not_counted():
    remote, report = RemotePending(), LoadReport("r0")
    remote.reported(report, ["late"], fresh=True)
    remote.heard(report, "late", 4)
    assert report.pending_blocks == 0


def test_a_placement_never_taken_stops_counting_after_hold_s():
    remote, report = RemotePending(hold_s=0.05), LoadReport("r0")
    remote.heard(report, "refused", 6)
    time.sleep(0.06)
    remote.reported(report, [], fresh=False)
    assert report.pending_blocks == 0
