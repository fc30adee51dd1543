"""`loop.oracle=labelstudio` against a real Label Studio 1.23.2 server (tests/labelstudio_server.py).

The tests act as the annotators through the server's API, as its labelling page does: submit the
prediction as it is (`parent_prediction`), move a box, submit an image with no box, skip a task
(`was_cancelled`), leave one alone. The loop is the real one on a team's layout of generated images (so
the seed set goes to the annotators too): two rounds, the seed set and round 0 labelled in the project,
round 1 trained on exactly what they finished. Expected labels are built here from the boxes the test
sent, in pixels, never read from the code under test.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import replace

import cv2
import numpy as np
import pytest
import requests
from hydra import compose, initialize_config_dir

from raylib import labelstudio_project, paths, stages, storage, synthetic
from raylib.config import LabelStudioConfig, SyntheticConfig, to_config
from raylib.dataset import ensure_dataset
from raylib.formats import labelstudio, voc
from raylib.labelstudio_project import LabelStudioError
from raylib.loop import run_loop
from raylib.paths import RoundPaths
from tests import labelstudio_server
from tests.helpers import free_ports

pytestmark = pytest.mark.slow

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
CLASSES = ["circle", "square", "triangle", "star"]
SEED_SIZE = 8


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One migrated Label Studio data dir for the module's servers (~60 s alone, more beside other tests)."""
    return labelstudio_server.make_template(str(tmp_path_factory.mktemp("ls_template")))


@pytest.fixture
def team(tmp_path):
    """A team's folder of unlabelled images (synthetic, so their truth is known) and a COCO test set:
    (document root, pool root, image_id -> objects, image_id -> (width, height))."""
    generated = str(tmp_path / "generated")
    synthetic.generate(SyntheticConfig(num_pool=24, num_test=8, min_size=96, max_size=160, classes=CLASSES), generated)
    ids = {name: storage.read_text(storage.join(generated, "ImageSets", "Main", f"{name}.txt")).split()
           for name in ("trainval", "test")}
    table, errors = voc.read_voc_labels(generated, ids["trainval"] + ids["test"], CLASSES)
    assert not errors
    truth = dict(zip(table.column("image_id").to_pylist(), table.column("objects").to_pylist()))
    root = tmp_path / "share" / "raw"
    sizes, images, annotations = {}, [], []
    for image_id in ids["trainval"]:
        image = cv2.imread(os.path.join(generated, "JPEGImages", f"{image_id}.jpg"))
        storage.write_bytes(str(root / f"{image_id}.jpg"), cv2.imencode(".jpg", image)[1].tobytes())
        sizes[f"{image_id}.jpg"] = (image.shape[1], image.shape[0])
    for n, image_id in enumerate(ids["test"], 1):
        source = os.path.join(generated, "JPEGImages", f"{image_id}.jpg")
        storage.write_bytes(str(tmp_path / "test" / f"{image_id}.jpg"), open(source, "rb").read())
        height, width = cv2.imread(source).shape[:2]
        images.append({"id": n, "file_name": f"{image_id}.jpg", "width": width, "height": height})
        annotations += [{"id": len(annotations) + 1, "image_id": n, "category_id": o["class_id"] + 1, "iscrowd": 0,
                         "bbox": [o["x1"], o["y1"], o["x2"] - o["x1"], o["y2"] - o["y1"]],
                         "area": (o["x2"] - o["x1"]) * (o["y2"] - o["y1"])} for o in truth[image_id]]
    storage.write_text(str(tmp_path / "test" / "instances.json"), json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]}))
    pool_truth = {f"{image_id}.jpg": truth[image_id] for image_id in ids["trainval"]}
    return str(tmp_path / "share"), str(root), pool_truth, sizes


def _config(team, tmp_path, server, *extra: str):
    document_root, root, _, _ = team
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return to_config(compose("config", overrides=[
            "debug=fast", "cluster.num_cpus=2", "data=images", f"data.root={root}",
            f"data.test={tmp_path}/test/instances.json", "loop.oracle=labelstudio",
            f"loop.labelstudio.url={server.url}", f"loop.labelstudio_document_root={document_root}",
            f"loop.seed_size={SEED_SIZE}", "loop.rounds=2", f"run_root={tmp_path}/runs/ls", *extra]))


class Annotator:
    """What an annotator's browser does, through the same API."""

    def __init__(self, url: str, token: str):
        self.url, self.headers = url, {"Authorization": f"Token {token}"}

    def call(self, method: str, path: str, **kwargs) -> object:
        answer = requests.request(method, self.url + path, headers=self.headers, timeout=60, **kwargs)
        assert answer.status_code < 400, (method, path, answer.status_code, answer.text[:500])
        return answer.json() if answer.content else None

    def tasks(self, project_id: int) -> list[dict]:
        """Every task of the project with its predictions and annotations (the export of all tasks)."""
        return self.call("GET", f"/api/projects/{project_id}/export",
                         params={"exportType": "JSON", "download_all_tasks": "true"})

    def prediction(self, task: dict) -> dict:
        """The task's prediction (the model's boxes), as the labelling page loads it."""
        answer = self.call("GET", "/api/predictions/", params={"task": task["id"]})
        found = answer if isinstance(answer, list) else answer["results"]
        assert len(found) == 1, found
        return found[0]

    def submit(self, task: dict, result: list[dict], parent_prediction: int | None = None) -> None:
        body = {"result": result, "was_cancelled": False, "lead_time": 3.0}
        if parent_prediction is not None:
            body["parent_prediction"] = parent_prediction
        self.call("POST", f"/api/tasks/{task['id']}/annotations/", json=body)

    def skip(self, task: dict) -> None:
        self.call("POST", f"/api/tasks/{task['id']}/annotations/", json={"result": [], "was_cancelled": True})


def _box(obj: dict, size: tuple[int, int], n: int) -> dict:
    """A rectangle as the labelling page submits it (percent of the image)."""
    width, height = size
    return {"id": f"r{n}", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"x": 100 * obj["x1"] / width, "y": 100 * obj["y1"] / height,
                      "width": 100 * (obj["x2"] - obj["x1"]) / width, "height": 100 * (obj["y2"] - obj["y1"]) / height,
                      "rotation": 0, "rectanglelabels": [CLASSES[obj["class_id"]]]}}


def _pixels(result: list[dict], size: tuple[int, int]) -> list[tuple]:
    """The boxes of submitted regions in pixels, (class_id, x1, y1, x2, y2) rounded to 0.01 px."""
    width, height = size
    out = []
    for region in result:
        v = region["value"]
        out.append((CLASSES.index(v["rectanglelabels"][0]), round(v["x"] * width / 100, 2),
                    round(v["y"] * height / 100, 2), round((v["x"] + v["width"]) * width / 100, 2),
                    round((v["y"] + v["height"]) * height / 100, 2)))
    return sorted(out)


def _committed(labels_uri: str) -> dict[str, list[tuple]]:
    rows = storage.read_table(labels_uri).to_pylist()
    return {row["image_id"]: sorted((o["class_id"], round(o["x1"], 2), round(o["y1"], 2), round(o["x2"], 2),
                                     round(o["y2"], 2)) for o in row["objects"]) for row in rows}


def _wait_for(condition, seconds: float = 300) -> None:
    """Poll `condition` (what another thread logs) until it holds, at most `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _of_round(tasks: list[dict], round_idx: int) -> list[dict]:
    return sorted((t for t in tasks if t["data"].get("round") == round_idx), key=lambda t: t["data"]["image_id"])


def test_two_rounds_with_annotators_in_label_studio(template, team, tmp_path, ray_session, monkeypatch, caplog):
    """Seed set and round 0 labelled in a live project with a personal access token; each round commits
    exactly what the annotators finished, with their geometry; round 1 trains on it; no task twice."""
    document_root, root, truth, sizes = team
    with labelstudio_server.server_from(template, str(tmp_path / "ls"), document_root) as server:
        monkeypatch.setenv(labelstudio_project.TOKEN_ENV, template.personal_token)
        cfg = _config(team, tmp_path, server)
        annotator = Annotator(server.url, labelstudio_server.LEGACY_TOKEN)

        first = run_loop(cfg)
        assert re.match(rf"seed( set)?: waiting for labels: 0 of {SEED_SIZE} ", first.stopped_because)
        project_id = json.loads(storage.read_text(f"{cfg.run_root}/{labelstudio_project.PROJECT_RECORD_FILE}"))["project_id"]
        seed_tasks = _of_round(annotator.tasks(project_id), -1)
        assert len(seed_tasks) == SEED_SIZE and all(annotator.prediction(t)["result"] == [] for t in seed_tasks)
        # Label Studio serves the images: the local-files storage was attached on the images' folder.
        image = requests.get(server.url + seed_tasks[0]["data"]["image"], headers=annotator.headers, timeout=60)
        assert image.status_code == 200 and image.content == open(f"{root}/{seed_tasks[0]['data']['image_id']}", "rb").read()

        assert re.match("seed( set)?: waiting for labels: 0 of", run_loop(cfg).stopped_because)  # a rerun ...
        assert len(annotator.tasks(project_id)) == SEED_SIZE  # ... imports nothing twice

        # The seed set, while the oracle stage waits on the project (wait=true): six drawn from scratch (one
        # of them empty), one skipped, one left; then "commit what is there".
        caplog.set_level(logging.INFO, logger="raylib")
        waiting = replace(cfg, loop=replace(cfg.loop, labelstudio=replace(cfg.loop.labelstudio, wait=True, poll_s=0.5)))
        outcome = []
        oracle = threading.Thread(target=lambda: outcome.append(stages.oracle(
            waiting, ensure_dataset(waiting), RoundPaths(cfg.run_root, paths.SEED_ROUND))))
        oracle.start()
        _wait_for(lambda: f": 0 of {SEED_SIZE} labelled in Label Studio" in caplog.text)
        expected_seed = {}
        for task in seed_tasks[:6]:
            image_id = task["data"]["image_id"]
            objects = truth[image_id] if task is not seed_tasks[5] else []
            result = [_box(o, sizes[image_id], n) for n, o in enumerate(objects)]
            annotator.submit(task, result)
            expected_seed[image_id] = _pixels(result, sizes[image_id])
        annotator.skip(seed_tasks[6])
        _wait_for(lambda: f": 6 of {SEED_SIZE} labelled in Label Studio" in caplog.text)
        storage.write_text(f"{cfg.run_root}/_complete/seed", "")
        oracle.join(timeout=300)
        assert outcome and outcome[0]["n_labelled"] == 6, outcome

        second = run_loop(cfg)
        assert _committed(paths.seed_labels(cfg.run_root)) == expected_seed
        assert second.rounds_done == 1 and second.stopped_because.startswith("round 0: waiting for labels: 0 of")
        round0 = _of_round(annotator.tasks(project_id), 0)
        selected = storage.read_table(RoundPaths(cfg.run_root, 0).selection).column("image_id").to_pylist()
        assert sorted(t["data"]["image_id"] for t in round0) == sorted(set(selected))
        predictions = {t["id"]: annotator.prediction(t) for t in round0}
        with_boxes = [t for t in round0 if predictions[t["id"]]["result"]]
        assert len(round0) >= 5 and len(with_boxes) >= 2, "the round-0 model's boxes are the tasks' predictions"

        # Round 0: accept a prediction, edit one, submit one empty, skip one, leave the rest.
        accepted, edited = with_boxes[0], with_boxes[1]
        rest = [t for t in round0 if t is not accepted and t is not edited]
        empty, skipped = rest[0], rest[1]
        prediction = predictions[accepted["id"]]
        annotator.submit(accepted, prediction["result"], parent_prediction=prediction["id"])
        moved = json.loads(json.dumps(predictions[edited["id"]]["result"][:1]))
        moved[0]["value"].update(x=10.0, y=12.5, width=30.0, height=25.0)  # inside the image
        annotator.submit(edited, moved)
        annotator.submit(empty, [])
        annotator.skip(skipped)
        size_of = {t["data"]["image_id"]: sizes[t["data"]["image_id"]] for t in round0}
        expected_round0 = {t["data"]["image_id"]: _pixels(r, size_of[t["data"]["image_id"]])
                           for t, r in ((accepted, prediction["result"]), (edited, moved), (empty, []))}
        storage.write_text(f"{cfg.run_root}/_complete/round=00", "")

        third = run_loop(cfg)
        assert third.rounds_done == 2, third.stopped_because
        labels = _committed(RoundPaths(cfg.run_root, 0).labels)
        assert labels == {**expected_seed, **expected_round0}
        assert storage.exists(RoundPaths(cfg.run_root, 1).weights)  # round 1 trained on those labels
        errors = json.loads(storage.read_text(RoundPaths(cfg.run_root, 0).oracle_errors))
        assert errors[skipped["data"]["image_id"]] == "not delivered yet"  # skipped: stays in the pool

        # Running the oracle's sync for a committed round again imports nothing.
        caplog.clear()
        labelstudio_project.sync_round(cfg.loop.labelstudio, RoundPaths(cfg.run_root, 0), CLASSES, document_root)
        assert len(annotator.tasks(project_id)) == SEED_SIZE + len(round0)
        assert "tasks imported" not in caplog.text


def test_each_server_problem_is_one_line_and_commits_nothing(template, team, tmp_path, monkeypatch):
    """Unreachable server, a wrong token of each kind, a changed labelling config, a deleted project."""
    document_root = team[0]
    run_root = str(tmp_path / "runs" / "r")
    monkeypatch.setenv(labelstudio_project.TOKEN_ENV, labelstudio_server.LEGACY_TOKEN)
    closed = LabelStudioConfig(url=f"http://127.0.0.1:{free_ports(1)[0]}")
    with pytest.raises(LabelStudioError, match=r"^Label Studio at http://127.0.0.1:\d+ is unreachable \(Connection"):
        labelstudio_project.open_project(labelstudio_project.connect(closed), closed, run_root, CLASSES)
    with labelstudio_server.server_from(template, str(tmp_path / "ls"), document_root) as server:
        settings = LabelStudioConfig(url=server.url)
        for wrong in ("f" * 40, "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"):
            monkeypatch.setenv(labelstudio_project.TOKEN_ENV, wrong)
            with pytest.raises(LabelStudioError, match="refused the .*token in LABEL_STUDIO_API_KEY") as error:
                labelstudio_project.open_project(labelstudio_project.connect(settings), settings, run_root, CLASSES)
            assert wrong not in str(error.value) and "\n" not in str(error.value)
        monkeypatch.setenv(labelstudio_project.TOKEN_ENV, labelstudio_server.LEGACY_TOKEN)
        client = labelstudio_project.connect(settings)
        project_id = labelstudio_project.open_project(client, settings, run_root, CLASSES)
        assert labelstudio_project.open_project(client, settings, run_root, CLASSES) == project_id  # found again
        other = "<View><Image name=\"image\" value=\"$image\"/><RectangleLabels name=\"label\" toName=\"image\">" \
                "<Label value=\"circle\"/><Label value=\"dog\"/></RectangleLabels></View>"
        client.request("PATCH", f"/api/projects/{project_id}/", json={"label_config": other})
        with pytest.raises(LabelStudioError, match=r"labelling config was changed: .* \(found \['circle', 'dog'\]\)"):
            labelstudio_project.open_project(client, settings, run_root, CLASSES)
        client.request("DELETE", f"/api/projects/{project_id}/")
        with pytest.raises(LabelStudioError, match=rf"^Label Studio project {project_id} \(from '.*'\) is not on .*deleted\?"):
            labelstudio_project.open_project(client, settings, run_root, CLASSES)


@pytest.mark.s3
def test_images_in_a_private_bucket_are_signed_by_label_studio(template, s3_bucket, tmp_path, monkeypatch):
    """An s3:// pool: the project gets Label Studio's S3 storage (no key from us: the server's own
    credentials, here the moto endpoint's), and the task's image comes back through it."""
    image = cv2.imencode(".jpg", np.full((40, 60, 3), 90, np.uint8))[1].tobytes()
    uri = f"{s3_bucket}/raw/site/a.jpg"
    storage.write_bytes(uri, image)
    rp = RoundPaths(str(tmp_path / "runs" / "s3"), 0)
    tasks = labelstudio.preannotation_tasks([0], [uri], ["site/a.jpg"], np.array([60]), np.array([40]), np.array([0, 0]),
                                            np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0), CLASSES, "round 0")
    storage.write_bytes(storage.join(rp.preannotations, paths.LABELSTUDIO_FILE), b"[" + tasks + b"]")
    # Label Studio refuses storage endpoints on private addresses unless told (moto listens on 127.0.0.1).
    with labelstudio_server.server_from(template, str(tmp_path / "ls"), str(tmp_path),
                                        env={"SSRF_PROTECTION_ENABLED": "false"}) as server:
        monkeypatch.setenv(labelstudio_project.TOKEN_ENV, template.personal_token)
        settings = LabelStudioConfig(url=server.url)
        client = labelstudio_project.connect(settings)
        project_id = labelstudio_project.open_project(client, settings, rp.run_root, CLASSES)
        assert labelstudio_project.import_round(client, project_id, rp.preannotations, 0, None,
                                                os.environ["AWS_ENDPOINT_URL"], "us-east-1") == (1, 0)
        buckets = client.request("GET", "/api/storages/s3/", params={"project": project_id}).json()
        assert [b["bucket"] for b in buckets] == [s3_bucket[len("s3://"):]]
        annotator = Annotator(server.url, labelstudio_server.LEGACY_TOKEN)
        task = annotator.tasks(project_id)[0]
        shown = annotator.call("GET", f"/api/tasks/{task['id']}/")["data"]["image"]
        assert not shown.startswith("s3://"), shown  # resolved by the server, for the browser
        fetched = requests.get(server.url + shown if shown.startswith("/") else shown, headers=annotator.headers,
                               timeout=60)
        assert fetched.status_code == 200 and fetched.content == image
