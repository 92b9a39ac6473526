"""The pure part of fleet-wide limits: rooms, rates, weights, emptiness."""

from __future__ import annotations

import math

from martinet.server.lanes import Lane, Lanes, rate_window


def test_a_lane_without_limits_has_endless_room():
    assert Lane().room(0.0) == math.inf


def test_concurrency_room_follows_starts_and_ends():
    lane = Lane(concurrency=2)
    lane.started(0.0)
    lane.started(0.0)
    assert lane.room(0.0) == 0
    lane.ended()
    assert lane.room(0.0) == 1
    lane.ended()
    lane.ended()  # never below zero
    assert lane.running == 0


def test_a_rate_frees_a_start_once_its_window_has_passed():
    lane = Lane(rate=(2, 1.0))
    lane.started(10.0)
    lane.started(10.5)
    assert lane.room(10.9) == 0
    assert lane.next_free(10.9) == 10.0 + rate_window(1.0)
    assert lane.room(10.0 + rate_window(1.0) + 0.001) == 1
    assert rate_window(1.0) == 1.05 and rate_window(60.0) == 60.25


def test_a_lane_full_by_concurrency_waits_for_an_end_not_the_clock():
    lane = Lane(concurrency=1, rate=(5, 1.0))
    lane.started(0.0)
    assert lane.room(0.1) == 0 and lane.next_free(0.1) is None


def test_weights_share_slots_smoothly():
    lanes = Lanes()
    lanes.configure("a", weight=3)
    lanes.configure("b", weight=1)
    counts = {"a": 0, "b": 0}
    for _ in range(400):
        for queue, n in lanes.plan({"job"}, None, 1, 0.0):
            counts[queue] += n
    assert counts == {"a": 300, "b": 100}


def test_plan_respects_served_queues_pauses_and_rooms():
    lanes = Lanes()
    lanes.configure("a", concurrency=1)
    lanes.configure("b", paused=True)
    lanes.configure("c")
    plan = dict(lanes.plan({"job"}, {"a", "b"}, 5, 0.0))
    assert plan == {"a": 1}  # b paused, c not served, a capped at one
    assert dict(lanes.plan({"job"}, None, 4, 0.0)) == {"a": 1, "c": 3}


def test_an_empty_queue_is_skipped_for_those_names_until_work_arrives():
    lanes = Lanes()
    lanes.ready("a")
    lanes.found_empty(frozenset({"x", "y"}), "a")  # a claim for x and y found no more in a
    assert lanes.plan({"x", "y"}, None, 2, 0.0) == []
    assert lanes.plan({"x"}, None, 2, 0.0) == []  # fewer names: nothing for it either
    assert lanes.plan({"x", "z"}, None, 2, 0.0) == [("a", 2)]  # z may still be there
    lanes.ready("a")
    assert lanes.plan({"x", "y"}, None, 2, 0.0) == [("a", 2)]
    lanes.found_empty(frozenset({"x", "y"}), "a")
    lanes.ready(None)  # ready somewhere: look again everywhere
    assert lanes.plan({"x", "y"}, None, 1, 0.0) == [("a", 1)]


def test_open_queues_are_those_a_worker_may_find_work_in():
    lanes = Lanes()
    lanes.configure("full", concurrency=1)
    lanes.started("full", "x", 0.0)
    lanes.configure("held", paused=True)
    lanes.configure("dry")
    lanes.configure("open")
    lanes.found_empty(frozenset({"x"}), "dry")
    assert lanes.open_queues({"x"}, None, 0.0) == ["open"]
    assert lanes.open_queues({"x", "y"}, None, 0.0) == ["dry", "open"]  # y may be in dry
    assert lanes.open_queues({"x"}, {"dry", "full"}, 0.0) == []


def test_task_name_limits():
    lanes = Lanes()
    lanes.limit_name("charge", 2, (10, 1.0))
    lanes.started("default", "charge", 0.0)
    assert lanes.name_room("charge", 0.0) == 1 and lanes.name_room("other", 0.0) == math.inf
    lanes.ended("default", "charge")
    lanes.limit_name("charge", None, None)
    assert lanes.name_room("charge", 0.0) == math.inf


def test_starts_are_restamped_to_when_they_were_sent():
    lanes = Lanes()
    lanes.configure("q", rate=(2, 1.0))
    lanes.limit_name("n", None, (1, 1.0))
    lanes.started("q", "n", 100.0)
    lanes.started("q", "other", 100.5)
    lanes.started("q", "other", 100.5)
    lanes.restamp(100.5, 100.6)  # a turn that claimed at 100.5 sent at 100.6
    assert list(lanes.queue("q").starts) == [100.0, 100.6, 100.6]
    assert list(lanes.names["n"].starts) == [100.0]
    assert lanes.is_rated("q") and lanes.is_rated(name="n") and not lanes.is_rated(name="other")
    assert not lanes.is_rated("elsewhere")
