"""A live Label Studio project the loop fills and reads (`loop.oracle=labelstudio`).

Per round (the seed set too), `sync_round`:
1. opens the run's project: `loop.labelstudio.project_id`, else the one recorded in
   `<run_root>/labelstudio_project.json`, else the project titled `loop.labelstudio.title` (default: a
   title naming the run root), created with the labelling config of our classes when there is none;
   a project whose config no longer has our boxes and classes is refused;
2. attaches storage that serves the round's images: local files (a "Local files" storage on the
   images' folder, under the server's LOCAL_FILES_DOCUMENT_ROOT, `loop.labelstudio_document_root`), or
   an S3 bucket (Label Studio's S3 storage with presigned URLs, signed by the server with its own
   credentials when an annotator opens a task: the bucket stays private, nothing expires while the
   round waits, and no key leaves the server);
3. imports the round's tasks, the export's `preannotations_labelstudio*.json` (the one writer of Label
   Studio tasks, raylib/formats/labelstudio.py) with the model's boxes as predictions, each tagged
   `data.round`; a task whose (round, image_id) the project has is not imported again;
4. exports the project's finished tasks of that round into `<round>/labelstudio/export.json`, which the
   oracle then reads as any Label Studio delivery (raylib/formats/deliveries.py, raylib/oracle.py).

The server speaks REST; this is a small client over `requests` (already installed with Ray) rather than
`label-studio-sdk`, whose generated client pins its own httpx/pydantic versions and which we would use
for eight calls. The token comes only from LABEL_STUDIO_API_KEY: a personal access token (a JWT refresh
token, exchanged for a short-lived access token sent as Bearer) or a legacy token (`Token`). It is
never in the config, a log line or an error. Every failure (server unreachable, token refused, project
gone, labelling config changed) is one LabelStudioError line; nothing committed is touched.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Any

import requests

from raylib import storage
from raylib.config import ConfigError, LabelStudioConfig
from raylib.formats import labelstudio
from raylib.paths import LABELSTUDIO_FILE, RoundPaths

log = logging.getLogger(__name__)

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
PROJECT_RECORD_FILE = "labelstudio_project.json"  # in the run root: the project the run fills
EXPORT_DIR, EXPORT_FILE = "labelstudio", "export.json"  # in the round's folder: what the oracle reads
IMPORT_BATCH = 500  # tasks per import request: Label Studio parses a request whole
TIMEOUT_S = 120  # per request: an export of a large project takes a while
MAX_TITLE = 50  # Label Studio's limit on a project title


class LabelStudioError(ConfigError):
    """One line: what Label Studio answered, and what to do. Nothing of the run is changed."""


@dataclass
class Client:
    url: str
    token: str = field(repr=False)  # never printed
    session: requests.Session = field(default_factory=requests.Session, repr=False)
    header: str = field(default="", repr=False)

    def request(self, method: str, path: str, ok_404: bool = False, **kwargs: Any) -> requests.Response | None:
        """`method` on `url + path` with the token; a 401 with an access token refreshes it once. None
        for a 404 when `ok_404`; any other failure is a LabelStudioError naming the call."""
        for attempt in (0, 1):
            if not self.header or attempt:
                self.header = _authorization(self)
            try:
                answer = self.session.request(method, self.url + path, headers={"Authorization": self.header},
                                              timeout=TIMEOUT_S, **kwargs)
            except requests.RequestException as exc:
                raise LabelStudioError(f"Label Studio at {self.url} is unreachable ({type(exc).__name__}): start it "
                                       "or fix loop.labelstudio.url; nothing was committed") from None
            if answer.status_code != 401 or not self.header.startswith("Bearer") or attempt:
                break
        if answer.status_code == 404 and ok_404:
            return None
        if answer.status_code in (401, 403):
            raise LabelStudioError(f"Label Studio at {self.url} refused the token in {TOKEN_ENV} (HTTP "
                                   f"{answer.status_code} on {method} {path}): set it to a personal access token "
                                   "(Account & Settings > Personal Access Token) of a member of the project's "
                                   "organisation; nothing was committed")
        if answer.status_code >= 400:
            raise LabelStudioError(f"Label Studio at {self.url}: {method} {path} answered HTTP {answer.status_code}: "
                                   f"{answer.text[:300]!r}")
        return answer


def _authorization(client: Client) -> str:
    """The Authorization header for the token: a personal access token (a JWT: three dot-separated
    parts) is a refresh token, exchanged for an access token; anything else is a legacy token."""
    if client.token.count(".") != 2:
        return f"Token {client.token}"
    try:
        answer = client.session.post(f"{client.url}/api/token/refresh/", json={"refresh": client.token},
                                     timeout=TIMEOUT_S)
    except requests.RequestException as exc:
        raise LabelStudioError(f"Label Studio at {client.url} is unreachable ({type(exc).__name__}): start it or "
                               "fix loop.labelstudio.url; nothing was committed") from None
    if answer.status_code != 200 or "access" not in answer.json():
        raise LabelStudioError(f"Label Studio at {client.url} refused the personal access token in {TOKEN_ENV} "
                               f"(HTTP {answer.status_code} on /api/token/refresh/): it was revoked, expired or is "
                               "of another server; make a new one (Account & Settings); nothing was committed")
    return f"Bearer {answer.json()['access']}"


def connect(settings: LabelStudioConfig) -> Client:
    """A client for `loop.labelstudio.url` with the token of LABEL_STUDIO_API_KEY."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise LabelStudioError(f"loop.oracle=labelstudio needs a token in the environment variable {TOKEN_ENV} "
                               "(a personal access token from Label Studio's Account & Settings); it is never "
                               "read from the config")
    return Client(settings.url.rstrip("/"), token)


# -------------------------------------------------------------------------------------------- project


def default_title(run_root: str) -> str:
    """A title naming the run: its last folders and a hash of the whole root (two runs ending alike
    differ), within Label Studio's 50 characters."""
    digest = hashlib.sha1(run_root.encode()).hexdigest()[:6]
    tail = "/".join(run_root.rstrip("/").split("/")[-2:])
    room = MAX_TITLE - len("raylib  ") - len(digest)
    return f"raylib {tail[-room:]} {digest}"


def check_label_config(config: str, class_names: list[str], where: str) -> None:
    """The project's labelling config must still draw our boxes (RectangleLabels `label` on Image
    `image`) with exactly our classes; anything else in it (instructions, layout) may change."""
    try:
        root = ElementTree.fromstring(config)
    except ElementTree.ParseError as exc:
        raise LabelStudioError(f"{where}: its labelling config is not XML ({exc})") from None
    boxes = [tag for tag in root.iter("RectangleLabels") if tag.get("name") == labelstudio.FROM_NAME]
    images = [tag for tag in root.iter("Image") if tag.get("name") == labelstudio.TO_NAME]
    labels = sorted(label.get("value") or "" for tag in boxes for label in tag.iter("Label"))
    if len(boxes) != 1 or boxes[0].get("toName") != labelstudio.TO_NAME or not images or labels != sorted(class_names):
        raise LabelStudioError(
            f"{where}: its labelling config was changed: it must keep <RectangleLabels name=\"{labelstudio.FROM_NAME}\" "
            f"toName=\"{labelstudio.TO_NAME}\"> with the labels {class_names} (found {labels}). Restore it from "
            "label_config.xml in the round's preannotations/, or point loop.labelstudio.project_id at another project")


def open_project(client: Client, settings: LabelStudioConfig, run_root: str, class_names: list[str]) -> int:
    """The id of the run's project (see the module docstring), recorded in the run root; its labelling
    config checked."""
    record_uri = storage.join(run_root, PROJECT_RECORD_FILE)
    recorded = json.loads(storage.read_text(record_uri)) if storage.exists(record_uri) else {}
    project_id = settings.project_id or recorded.get("project_id")
    title = settings.title or default_title(run_root)
    if project_id:
        answer = client.request("GET", f"/api/projects/{project_id}/", ok_404=True)
        if answer is None:
            why = "loop.labelstudio.project_id" if settings.project_id else f"'{record_uri}'"
            raise LabelStudioError(
                f"Label Studio project {project_id} (from {why}) is not on {client.url}: deleted? Its annotations "
                f"can't be read back. Point loop.labelstudio.project_id at the project that has them, or delete "
                f"'{record_uri}' to start a new project (committed rounds stay as they are)")
        project = answer.json()
    else:
        found = client.request("GET", "/api/projects/", params={"title": title, "page_size": 100}).json()
        matches = [p for p in found.get("results", found if isinstance(found, list) else []) if p["title"] == title]
        if matches:
            project = min(matches, key=lambda p: p["id"])
        else:
            project = client.request("POST", "/api/projects/", json={
                "title": title, "label_config": labelstudio.label_config(class_names),
                "description": f"raylib active learning, run root {run_root}: one task per selected image, "
                               "with the model's boxes to correct"}).json()
            log.info(f"Label Studio: created project {project['id']} '{title}' at {client.url}")
    check_label_config(project.get("label_config", ""), class_names,
                       f"Label Studio project {project['id']} at {client.url}")
    if recorded.get("project_id") != project["id"]:
        storage.write_text(record_uri, json.dumps({"url": client.url, "project_id": project["id"], "title":
                                                   project["title"]}, indent=1))
    return int(project["id"])


# -------------------------------------------------------------------------------------------- storage


def _storages(client: Client, project_id: int, kind: str) -> list[dict]:
    answer = client.request("GET", f"/api/storages/{kind}/", params={"project": project_id}).json()
    return answer if isinstance(answer, list) else answer.get("results", [])


def attach_storage(client: Client, project_id: int, image_urls: list[str], document_root: str | None,
                   endpoint_url: str | None = None, region: str | None = None) -> None:
    """A storage of the project that serves the images at `image_urls` (tasks' `data.image`), unless one
    it has does: a "Local files" storage on the local images' common folder (under the server's
    LOCAL_FILES_DOCUMENT_ROOT, `document_root`), an S3 storage per bucket (signed by the server)."""
    root = os.path.abspath(document_root or "/")
    local = [os.path.dirname(os.path.join(root, path)) for path in map(labelstudio.local_path, image_urls) if path]
    buckets = sorted({storage.s3_bucket_prefix(url)[0] for url in image_urls if storage.is_s3(url)})
    if local:
        folder = os.path.commonpath(local)
        have = [s["path"].rstrip("/") + "/" for s in _storages(client, project_id, "localfiles")]
        if not any((folder.rstrip("/") + "/").startswith(path) for path in have):
            client.request("POST", "/api/storages/localfiles/", json={
                "project": project_id, "path": folder, "use_blob_urls": True, "title": f"raylib {folder}"[:256]})
    have_buckets = {s.get("bucket") for s in _storages(client, project_id, "s3")} if buckets else set()
    for bucket in buckets:
        if bucket not in have_buckets:
            client.request("POST", "/api/storages/s3/", json={
                "project": project_id, "bucket": bucket, "prefix": "", "use_blob_urls": False, "presign": True,
                "presign_ttl": 60, "s3_endpoint": endpoint_url or "", "region_name": region or "",
                "title": f"raylib s3://{bucket}"})


# ---------------------------------------------------------------------------------------- import/export


def project_tasks(client: Client, project_id: int, finished_only: bool) -> list[dict]:
    """The project's tasks as Label Studio exports them (JSON): with an annotation (finished or
    skipped) only, or all of them."""
    return client.request("GET", f"/api/projects/{project_id}/export", params={
        "exportType": "JSON", "download_all_tasks": "false" if finished_only else "true"}).json()


def _round_of(task: dict) -> object:
    data = task.get("data")
    return data.get("round") if isinstance(data, dict) else None


def import_round(client: Client, project_id: int, preannotations: str, round_idx: int, document_root: str | None,
                 endpoint_url: str | None = None, region: str | None = None) -> tuple[int, int]:
    """The round's tasks (the export's Label Studio files, one part at a time) imported with their
    predictions and `data.round`, less those the project has for this round already, after the storage
    that serves their images (`attach_storage`): (imported, already there)."""
    present = {task["data"].get("image_id") for task in project_tasks(client, project_id, finished_only=False)
               if _round_of(task) == round_idx}
    stem = LABELSTUDIO_FILE.removesuffix(".json")
    files = [uri for uri in storage.list_files(preannotations, ".json")
             if posixpath.basename(uri) == LABELSTUDIO_FILE or posixpath.basename(uri).startswith(stem + "-part-")]
    imported = already = 0
    for uri in sorted(files):
        tasks = json.loads(storage.read_text(uri))
        new = []
        for task in tasks:
            if task["data"]["image_id"] in present:
                already += 1
                continue
            task["data"]["round"] = round_idx
            new.append(task)
        attach_storage(client, project_id, [task["data"][labelstudio.TO_NAME] for task in new], document_root,
                       endpoint_url, region)
        for start in range(0, len(new), IMPORT_BATCH):
            client.request("POST", f"/api/projects/{project_id}/import", json=new[start:start + IMPORT_BATCH])
        imported += len(new)
    return imported, already


def export_dir(rp: RoundPaths) -> str:
    """Where the round's Label Studio export is written: what the oracle reads as the delivery."""
    return storage.join(rp.root, EXPORT_DIR)


def export_round(client: Client, project_id: int, round_idx: int, out_dir: str) -> int:
    """The project's finished tasks of round `round_idx` (annotated or skipped) as a Label Studio JSON
    export at `<out_dir>/export.json`; returns how many."""
    tasks = [task for task in project_tasks(client, project_id, finished_only=True) if _round_of(task) == round_idx]
    storage.write_text(storage.join(out_dir, EXPORT_FILE), json.dumps(tasks))
    return len(tasks)


def sync_round(settings: LabelStudioConfig, rp: RoundPaths, class_names: list[str], document_root: str | None,
               endpoint_url: str | None = None, region: str | None = None) -> int:
    """Steps 1-4 of the module docstring for round `rp`: the round's tasks in the project (once), its
    finished ones exported for the oracle. Returns the project's id."""
    client = connect(settings)
    project_id = open_project(client, settings, rp.run_root, class_names)
    imported, already = import_round(client, project_id, rp.preannotations, rp.round_idx, document_root,
                                     endpoint_url, region)
    if imported:
        log.info(f"Label Studio: {imported} tasks imported into project {project_id} ({already} there already)")
    n_finished = export_round(client, project_id, rp.round_idx, export_dir(rp))
    log.info(f"Label Studio: project {project_id} has {n_finished} finished tasks of this round")
    return project_id
