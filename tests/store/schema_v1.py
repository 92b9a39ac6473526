"""The first schema (commit 84a3ad1, martinet/models.py), frozen: what a database made
by martinet's first version holds. Its tables are built with the plain database of
that version (on MySQL its TEXT columns are TEXT, not LONGTEXT: that version set
field_types too late for peewee to use them)."""

from __future__ import annotations

from peewee import (
    AutoField,
    BooleanField,
    CharField,
    DatabaseProxy,
    DoubleField,
    IntegerField,
    Model,
    TextField,
)

database = DatabaseProxy()


class BaseModel(Model):
    class Meta:
        database = database
        legacy_table_names = False


class Schedule(BaseModel):
    id = AutoField()
    request_id = CharField(max_length=64, null=True, unique=True)
    name = CharField(max_length=255)
    username = CharField(max_length=255, null=True)
    description = TextField(null=True)
    args = TextField(default="{}")
    queue = CharField(max_length=255, default="default")
    priority = IntegerField(default=0)
    max_attempts = IntegerField(null=True)
    kind = CharField(max_length=16)
    spec = CharField(max_length=255)
    timezone = CharField(max_length=64, default="UTC")
    next_due = DoubleField(null=True, index=True)
    last_due = DoubleField(null=True)
    status = CharField(max_length=16, default="active")
    created_at = DoubleField()
    updated_at = DoubleField()


class Task(BaseModel):
    id = AutoField()
    request_id = CharField(max_length=64, null=True, unique=True)
    name = CharField(max_length=255)
    username = CharField(max_length=255, null=True)
    description = TextField(null=True)
    args = TextField(default="{}")
    queue = CharField(max_length=255, default="default")
    priority = IntegerField(default=0)
    status = CharField(max_length=16)
    run_at = DoubleField()
    attempt = IntegerField(default=0)
    max_attempts = IntegerField(default=3)
    progress = DoubleField(null=True)
    progress_message = TextField(null=True)
    result = TextField(null=True)
    error_type = CharField(max_length=255, null=True)
    error_message = TextField(null=True)
    error_traceback = TextField(null=True)
    worker = CharField(max_length=255, null=True)
    lease_expires = DoubleField(null=True)
    cancel_requested = BooleanField(default=False)
    created_at = DoubleField()
    started_at = DoubleField(null=True)
    finished_at = DoubleField(null=True)
    updated_at = DoubleField()
    schedule_id = IntegerField(null=True)
    due_at = DoubleField(null=True)

    class Meta:
        indexes = (
            (("status", "run_at"), False),  # promotion of due tasks, lease checks
            (("status", "priority", "run_at"), False),  # dispatch order
            (("schedule_id", "due_at"), True),  # one run per schedule and due time
            (("name", "status"), False),
            (("worker", "status"), False),
        )


class Attempt(BaseModel):
    id = AutoField()
    task_id = IntegerField(index=True)
    attempt = IntegerField()
    worker = CharField(max_length=255, null=True)
    started_at = DoubleField(null=True)
    ended_at = DoubleField()
    outcome = CharField(max_length=16)
    error_type = CharField(max_length=255, null=True)
    error_message = TextField(null=True)
    error_traceback = TextField(null=True)


TABLES = [Schedule, Task, Attempt]
