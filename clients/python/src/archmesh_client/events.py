"""Events that travel on channels: the `data` of a `publication` frame."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class WorkflowStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    REVIEW_REQUIRED = "review_required"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Event(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class WorkflowUpdate(Event):
    """Progress of one workflow stage, published on `session:<session_id>`."""

    type: Literal["workflow_update"] = "workflow_update"
    session_id: str = Field(min_length=1, max_length=128)
    stage: str = Field(min_length=1, max_length=200)
    progress: float = Field(ge=0.0, le=1.0)
    status: WorkflowStatus = WorkflowStatus.RUNNING
    message: str | None = Field(None, max_length=2000)
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
