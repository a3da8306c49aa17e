"""What the MLflow UI opens on: a parent run's description and a saved view of its child runs.

What a program can set, as read in MLflow 3.17's UI (``mlflow/server/js/build/static/js``; see
``docs/mlflow-ui.md``):

- the view: the sidebar's *GenAI* / *Model training* switch, remembered by the browser and set for
  one page by the URL parameter ``workflowType=machine_learning`` (the experiment tag
  ``mlflow.experimentKind``, set by :mod:`lightning_fusion.tracking`, is not what this UI reads);
- a run's description: its tag ``mlflow.note.content`` (markdown), the first thing its page shows;
- a saved view of the runs table: an experiment tag ``mlflow.sharedViewState.<id>`` holding
  ``{"name", "createdAt", "state"}``, ``state`` the JSON of the search (``searchFilter``,
  ``orderByKey``, ``orderByAsc``) and of the table (``selectedColumns``, ``columnOrder``,
  ``columnWidths``). The UI lists it under *Views* and opens it at ``?viewStateShareKey=<id>``.
  Which parent runs are expanded is not part of a view (the browser keeps it), so a view lists a
  parent's children with the filter ``tags.`mlflow.parentRunId` = '<id>'``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

MODEL_TRAINING_WORKFLOW = "machine_learning"  # the UI's URL parameter workflowType: genai | machine_learning
NOTE_TAG = "mlflow.note.content"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_KEY_PARAMETER = "viewStateShareKey"
DEFAULT_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
MAX_NOTE_CHARACTERS = 8000  # MLflow's limit on a run tag's value
# the runs table's fixed columns (ag-grid column ids)
RUN_NAME_COLUMN = "attributes.`Run Name`"
FIXED_COLUMNS_AFTER = ("runDateAndNestInfo", "duration")  # "Created", "Duration"
START_TIME = "attributes.start_time"  # a sort key: in the order the runs started


def metric_column(key: str) -> str:
    return f"metrics.`{key}`"


def param_column(key: str) -> str:
    return f"params.`{key}`"


def tag_column(key: str) -> str:
    return f"tags.`{key}`"


def view_id(parent_run_id: str) -> str:
    """The saved view of a parent run's children (one per parent)."""
    return f"lf-{parent_run_id}"


def children_filter(parent_run_id: str) -> str:
    """The runs-table search that lists a parent's children (the UI nests them under a collapsed parent)."""
    return f"tags.`mlflow.parentRunId` = '{parent_run_id}'"


def save_children_view(
    client: Any,
    experiment_id: str,
    parent_run_id: str,
    name: str,
    columns: Sequence[str],
    order_by: str,
    ascending: bool = False,
) -> str:
    """Save the view "the children of this parent, these columns, sorted by ``order_by``"; returns its id."""
    state = {
        "searchFilter": children_filter(parent_run_id),
        "orderByKey": order_by,
        "orderByAsc": ascending,
        "selectedColumns": list(columns),
        "columnOrder": [RUN_NAME_COLUMN, *columns, *FIXED_COLUMNS_AFTER],
        "columnWidths": {RUN_NAME_COLUMN: 260} | {column: _width(column) for column in columns},
    }
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + view_id(parent_run_id), json.dumps(envelope))
    return view_id(parent_run_id)


def view_name(client: Any, run_id: str, what: str) -> str:
    """``<parent run name> <start time>: <what>``, the name the UI lists the view under."""
    info = client.get_run(run_id).info
    started = datetime.fromtimestamp(info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
    return f"{info.run_name} {started}: {what}"


def describe(client: Any, run_id: str, markdown: str) -> None:
    """Set the run's description (markdown), cut at a line to MLflow's limit on a tag."""
    if len(markdown) > MAX_NOTE_CHARACTERS:
        mark = "\n\n… (cut here: the run's artifacts hold the full tables)\n"
        markdown = markdown[: MAX_NOTE_CHARACTERS - len(mark)].rsplit("\n", 1)[0] + mark
    client.set_tag(run_id, NOTE_TAG, markdown)


def ui_address(tracking_uri: str) -> str:
    """The UI of a tracking server is the server; over a store, ``mlflow ui`` at its default address."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else DEFAULT_UI


def view_path(experiment_id: str, parent_run_id: str) -> str:
    """The view's address inside the UI (``#/...``; a link in a description)."""
    return (
        f"#/experiments/{experiment_id}/runs?workflowType={MODEL_TRAINING_WORKFLOW}"
        f"&{VIEW_KEY_PARAMETER}={view_id(parent_run_id)}"
    )


def view_url(tracking_uri: str, experiment_id: str, parent_run_id: str) -> str:
    """The runs table of a parent's children, as saved by :func:`save_children_view`."""
    return f"{ui_address(tracking_uri)}/{view_path(experiment_id, parent_run_id)}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A run's page (its description first), in the model-training view."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}?workflowType={MODEL_TRAINING_WORKFLOW}"
    return f"{ui_address(tracking_uri)}/{page}"


def _width(column: str) -> int:
    """Wide enough for the column's header (``test/balanced_accuracy``) and its sort mark."""
    label = column.split("`")[1] if "`" in column else column
    return max(170, 8 * len(label) + 40)  # metric values come with up to 16 digits


__all__ = [
    "describe",
    "metric_column",
    "param_column",
    "run_url",
    "save_children_view",
    "tag_column",
    "view_name",
    "view_path",
    "view_url",
]
