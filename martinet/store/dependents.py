"""Tasks that wait on others (submitted `after` them): the dependency graph's reads,
and what becomes of the waiting tasks when one they wait on ends."""

from __future__ import annotations

import json
from typing import Any

import peewee

from martinet.errors import TaskNotFound
from martinet.models import Task
from martinet.states import TERMINAL, TaskState
from martinet.store.rows import RunningRow
from martinet.store.sql import SqlKit


class Dependents(SqlKit):
    def _check_parents(self, after: list[int]) -> list[Task]:
        """The tasks named in `after` (id and status); TaskNotFound when one is missing."""
        if not after:
            return []
        Task = self.Task
        found = list(Task.select(Task.id, Task.status).where(Task.id.in_(after)))
        missing = sorted(set(after) - {p.id for p in found})
        if missing:
            raise TaskNotFound(
                f"after names unknown task(s) {', '.join(map(str, missing))}; nothing was created"
            )
        return found

    def links(self, task_id: int, limit: int = 100) -> dict[str, list[dict[str, Any]]]:
        """The tasks this one waits on ("parents") and those that wait on it ("children"),
        each with its id, name and status, `limit` of each at most, by id."""
        out: dict[str, list[dict[str, Any]]] = {}
        for key, mine, theirs in (("parents", "task_id", "parent_id"), ("children", "parent_id", "task_id")):
            sql = (
                f"SELECT task.id, task.name, task.status FROM dependency JOIN task ON task.id = dependency.{theirs}"
                f" WHERE dependency.{mine} = ? ORDER BY task.id LIMIT ?"
            )
            rows = self._exec(sql, (task_id, limit), cache=False).fetchall()
            out[key] = [{"id": i, "name": name, "status": status} for i, name, status in rows]
        return out

    def _parent_results(self, task_ids: list[int]) -> dict[int, dict[int, Any]]:
        """What the tasks these waited on returned, as {task id: {parent id: result}}."""
        Task, Dependency = self.Task, self.Dependency
        out: dict[int, dict[int, Any]] = {}
        query: peewee.BaseQuery = (  # tuples: peewee's stubs say a tuples() query yields models
            Dependency.select(Dependency.task_id, Dependency.parent_id, Task.result)
            .join(Task, on=(Task.id == Dependency.parent_id))
            .where(Dependency.task_id.in_(task_ids))
            .tuples()
        )
        for task_id, parent_id, result in query:
            out.setdefault(task_id, {})[parent_id] = None if result is None else json.loads(result)
        return out

    def _settle_dependents(self, parent: Task | RunningRow, status: str, now: float) -> dict[str, list[int]]:
        """A task ended: the tasks waiting on it are released (all their parents
        succeeded) or cancelled (this one will never succeed), down the chain."""
        settled: dict[str, list[int]] = {"released": [], "cancelled": []}
        if status not in TERMINAL or not parent.has_dependents:
            return settled
        Task, Dependency = self.Task, self.Dependency
        ended = [(parent.id, status)]
        while ended:
            parent_id, parent_status = ended.pop()
            children = (
                Task.select(Task.id, Task.run_at, Task.key_mode, Task.has_dependents)
                .join(Dependency, on=(Dependency.task_id == Task.id))
                .where(Dependency.parent_id == parent_id, Task.status == TaskState.WAITING)
            )
            for child in list(children):
                if parent_status != TaskState.SUCCEEDED:
                    self._cancel_waiting(child, f"task {parent_id} it waited on ended {parent_status}", now)
                    settled["cancelled"].append(child.id)
                    if child.has_dependents:
                        ended.append((child.id, TaskState.CANCELLED))
                elif not self.unfinished_parents(child.id):
                    self._release_waiting(child, now)
                    settled["released"].append(child.id)
        return settled

    def settle_waiting(self, task_ids: list[int] | None, now: float) -> dict[str, list[int]]:
        """Tasks made waiting by another writer (martinet.enqueue_in, in an application's
        transaction), looked at again once committed: a task they wait on may have ended
        between that writer's read of it and its commit, and that end saw no dependency
        to settle. Released or cancelled as _settle_dependents does (down the chain);
        the others wait on. None: every waiting task. Returns what it settled."""
        Task, Dependency = self.Task, self.Dependency
        settled: dict[str, list[int]] = {"released": [], "cancelled": []}
        children = Task.select(Task.id, Task.run_at, Task.key_mode, Task.has_dependents).where(
            Task.status == TaskState.WAITING
        )
        if task_ids is not None:
            children = children.where(Task.id.in_(task_ids))
        for child in list(children):
            parents = list(
                Task.select(Task.id, Task.status, Task.has_dependents)
                .join(Dependency, on=(Dependency.parent_id == Task.id))
                .where(Dependency.task_id == child.id)
                .order_by(Task.id)
            )
            self._mark_parents([p.id for p in parents if not p.has_dependents])
            ended = next((p for p in parents if p.status in (TaskState.DEAD, TaskState.CANCELLED)), None)
            if ended is not None:
                self._cancel_waiting(child, f"task {ended.id} it waited on ended {ended.status}", now)
                settled["cancelled"].append(child.id)
                if child.has_dependents:
                    more = self._settle_dependents(child, TaskState.CANCELLED, now)
                    settled["cancelled"] += more["cancelled"]
            elif all(p.status == TaskState.SUCCEEDED for p in parents):
                self._release_waiting(child, now)
                settled["released"].append(child.id)
        return settled

    def _mark_parents(self, task_ids: list[int]) -> None:
        """These tasks have others waiting on them: their end settles those."""
        if task_ids:
            Task = self.Task
            Task.update(has_dependents=True).where(Task.id.in_(task_ids)).execute()
            for task_id in task_ids:
                self.held.pop(task_id, None)

    def _cancel_waiting(self, child: Task, reason: str, now: float) -> None:
        changes: dict[str, Any] = {
            "status": TaskState.CANCELLED,
            "reason": reason,
            "finished_at": now,
            "updated_at": now,
        }
        if child.key_mode == "active":
            changes["unique_key"] = None
        Task = self.Task
        Task.update(**changes).where(Task.id == child.id, Task.status == TaskState.WAITING).execute()

    def _release_waiting(self, child: Task, now: float) -> None:
        Task = self.Task
        ready = TaskState.SCHEDULED if child.run_at > now else TaskState.QUEUED
        Task.update(status=ready, updated_at=now).where(
            Task.id == child.id, Task.status == TaskState.WAITING
        ).execute()

    def unfinished_parents(self, task_id: int) -> list[int]:
        """The tasks this one waits on that have not succeeded, by id."""
        Task, Dependency = self.Task, self.Dependency
        query = (
            Dependency.select(Dependency.parent_id)
            .join(Task, on=(Task.id == Dependency.parent_id))
            .where(Dependency.task_id == task_id, Task.status != TaskState.SUCCEEDED)
            .order_by(Dependency.parent_id)
        )
        return [d.parent_id for d in query]
