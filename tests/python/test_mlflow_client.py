"""The MLflow-compatible tracking API, driven by the official client (mlflow-skinny)
against a live `hangar serve --no-model --home TMP`: experiments, runs, logging,
search, metric history, artifacts through the proxy, the model-registry calls mapped
onto Hangar's registry, MLflow-style errors and auth."""
import json
import os
import subprocess
import tempfile
import time

import pytest

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from conftest import Server, hangar_bin, http  # noqa: E402
from test_no_model import write_tiny_gguf  # noqa: E402

# Stages are deprecated in MLflow (aliases replace them) but still part of its API.
pytestmark = pytest.mark.filterwarnings("ignore:.*is deprecated since 2.9.0:FutureWarning")


def error_code(excinfo) -> str:
    return excinfo.value.error_code


@pytest.fixture(scope="module")
def tracking():
    home = tempfile.mkdtemp(prefix="hangar-mlflow-")
    srv = Server("--no-model", "--home", home, with_model=False)
    os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
    mlflow.set_tracking_uri(srv.base)
    yield srv, home, MlflowClient(tracking_uri=srv.base)
    assert srv.stop() == 0


def test_default_experiment_and_experiment_lifecycle(tracking):
    _, _, c = tracking
    assert c.get_experiment("0").name == "Default"
    assert c.get_experiment_by_name("Default").experiment_id == "0"
    assert c.get_experiment_by_name("no-such-experiment") is None
    eid = c.create_experiment("exp-lifecycle", tags={"team": "nlp"})
    exp = c.get_experiment(eid)
    assert exp.name == "exp-lifecycle" and exp.tags == {"team": "nlp"}
    assert exp.lifecycle_stage == "active"
    with pytest.raises(MlflowException) as e:
        c.create_experiment("exp-lifecycle")
    assert error_code(e) == "RESOURCE_ALREADY_EXISTS"
    with pytest.raises(MlflowException) as e:
        c.get_experiment("987654")
    assert error_code(e) == "RESOURCE_DOES_NOT_EXIST"
    found = c.search_experiments(filter_string="name LIKE 'exp-life%'")
    assert [x.experiment_id for x in found] == [eid]
    assert [x.name for x in c.search_experiments(filter_string="tags.team = 'nlp'")] == ["exp-lifecycle"]
    c.set_experiment_tag(eid, "owner", "me")
    assert c.get_experiment(eid).tags["owner"] == "me"
    c.rename_experiment(eid, "exp-renamed")
    assert c.get_experiment_by_name("exp-renamed").experiment_id == eid
    c.delete_experiment(eid)
    assert c.get_experiment(eid).lifecycle_stage == "deleted"
    assert eid not in [x.experiment_id for x in c.search_experiments()]
    c.restore_experiment(eid)
    assert c.get_experiment(eid).lifecycle_stage == "active"


def test_runs_log_search_history_and_lifecycle(tracking):
    _, _, c = tracking
    eid = c.create_experiment("exp-runs")
    ids = []
    for i in range(4):
        run = c.create_run(eid, run_name=f"trial-{i}", start_time=1_700_000_000_000 + i,
                           tags={"kind": "sweep" if i % 2 else "base"})
        rid = run.info.run_id
        assert run.info.status == "RUNNING" and run.info.run_name == f"trial-{i}"
        c.log_param(rid, "lr", str(0.1 / (i + 1)))
        c.log_param(rid, "opt", "adam" if i < 2 else "sgd")
        for step in range(5):
            c.log_metric(rid, "loss", 1.0 / (step + 1 + i), timestamp=1_700_000_000_000 + step, step=step)
        c.log_metric(rid, "acc", 0.2 * i, step=0)
        c.set_tag(rid, "note", f"n{i}")
        ids.append(rid)
    c.log_batch(ids[0], metrics=[Metric("f1", 0.5, 1_700_000_000_000, 0)],
                params=[Param("batch", "32")], tags=[RunTag("batched", "yes")])
    r0 = c.get_run(ids[0])
    assert r0.data.params == {"lr": "0.1", "opt": "adam", "batch": "32"}
    assert r0.data.metrics["loss"] == pytest.approx(1.0 / 5)
    assert r0.data.metrics["f1"] == 0.5
    assert r0.data.tags["batched"] == "yes" and r0.data.tags["kind"] == "base"
    hist = c.get_metric_history(ids[1], "loss")
    assert [m.step for m in hist] == [0, 1, 2, 3, 4]
    assert [m.timestamp for m in hist] == [1_700_000_000_000 + s for s in range(5)]
    assert hist[0].value == pytest.approx(0.5)

    # Search: MLflow's filter grammar and order-by, over the wire.
    def names(flt="", order=None, **kw):
        runs = c.search_runs([eid], filter_string=flt, order_by=order, **kw)
        return [r.info.run_name for r in runs]

    assert names("metrics.acc > 0.3", ["metrics.acc DESC"]) == ["trial-3", "trial-2"]
    assert names("params.opt = 'adam'", ["attributes.start_time ASC"]) == ["trial-0", "trial-1"]
    assert names("tags.kind = 'sweep' and params.opt != 'adam'") == ["trial-3"]
    assert names("tags.note LIKE 'n%'", ["metrics.acc ASC"]) == ["trial-0", "trial-1", "trial-2", "trial-3"]
    assert names("attributes.run_name ILIKE 'TRIAL-1'") == ["trial-1"]
    assert names("params.opt IN ('sgd')", ["params.lr ASC"]) == ["trial-3", "trial-2"]
    assert names("metrics.`loss` < 0.3", ["run_name"]) == ["trial-0", "trial-1", "trial-2", "trial-3"]
    page = c.search_runs([eid], max_results=3, order_by=["metrics.acc DESC"])
    assert len(page) == 3 and page.token
    rest = c.search_runs([eid], max_results=3, order_by=["metrics.acc DESC"], page_token=page.token)
    assert [r.info.run_name for r in rest] == ["trial-0"]
    with pytest.raises(MlflowException) as e:
        c.search_runs([eid], filter_string="metrics.acc >> 1")
    assert error_code(e) == "INVALID_PARAMETER_VALUE"

    # End, delete, restore.
    c.set_terminated(ids[3], status="FINISHED", end_time=1_700_000_001_000)
    info = c.get_run(ids[3]).info
    assert info.status == "FINISHED" and info.end_time == 1_700_000_001_000
    assert names("attributes.status = 'FINISHED'") == ["trial-3"]
    c.delete_run(ids[2])
    assert c.get_run(ids[2]).info.lifecycle_stage == "deleted"
    assert "trial-2" not in names()
    from mlflow.entities import ViewType
    assert names(run_view_type=ViewType.DELETED_ONLY) == ["trial-2"]
    with pytest.raises(MlflowException) as e:
        c.log_param(ids[2], "late", "x")
    assert error_code(e) == "INVALID_PARAMETER_VALUE"
    c.restore_run(ids[2])
    assert "trial-2" in names()


def test_fluent_api_logs_a_run(tracking):
    mlflow.set_experiment("exp-fluent")
    with mlflow.start_run(run_name="fluent") as run:
        mlflow.log_params({"a": 1, "b": "two"})
        mlflow.log_metrics({"m": 0.25, "n": float("nan")}, step=3)
        mlflow.set_tags({"t": "v"})
    got = MlflowClient().get_run(run.info.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "fluent"
    assert got.data.params == {"a": "1", "b": "two"}
    assert got.data.metrics["m"] == 0.25
    assert got.data.metrics["n"] != got.data.metrics["n"]  # NaN survives the round trip


def test_param_immutability_and_batch_limits_are_mlflow_errors(tracking):
    srv, _, c = tracking
    rid = c.create_run("0").info.run_id
    c.log_param(rid, "fixed", "a")
    with pytest.raises(MlflowException) as e:
        c.log_param(rid, "fixed", "b")
    assert error_code(e) == "INVALID_PARAMETER_VALUE"
    # The client splits big batches itself, so send the raw request for the limits.
    url = srv.base + "/api/2.0/mlflow/runs/log-batch"
    h = {"content-type": "application/json"}
    cases = [
        ({"metrics": [{"key": "m", "value": 1, "timestamp": 1, "step": i} for i in range(1001)]}, "1000 metrics"),
        ({"params": [{"key": f"p{i}", "value": "v"} for i in range(101)]}, "100 params"),
        ({"tags": [{"key": f"t{i}", "value": "v"} for i in range(101)]}, "100 tags"),
        ({"params": [{"key": "long", "value": "x" * 6001}]}, "6000"),
    ]
    for body, needle in cases:
        status, _, out = http("POST", url, json.dumps({"run_id": rid, **body}).encode(), h)
        err = json.loads(out)
        assert status == 400 and err["error_code"] == "INVALID_PARAMETER_VALUE", (status, out)
        assert needle in err["message"], err
    # Malformed input is a 4xx in MLflow's shape, never a 500.
    for path, body in [
        ("/api/2.0/mlflow/runs/log-metric", b"{not json"),
        ("/api/2.0/mlflow/runs/log-metric", json.dumps({"run_id": rid, "key": "k"}).encode()),
        ("/api/2.0/mlflow/runs/log-metric", json.dumps({"run_id": rid, "key": "k", "value": "abc", "timestamp": 1}).encode()),
        ("/api/2.0/mlflow/runs/create", json.dumps({"experiment_id": "nope"}).encode()),
        ("/api/2.0/mlflow/runs/search", json.dumps({"experiment_ids": ["0"], "max_results": -1}).encode()),
        ("/api/2.0/mlflow/runs/search", json.dumps({"experiment_ids": ["0"], "page_token": "zz"}).encode()),
    ]:
        status, _, out = http("POST", srv.base + path, body, h)
        assert 400 <= status < 500, (path, status, out)
        assert "error_code" in json.loads(out), out
    status, _, out = http("GET", srv.base + "/api/2.0/mlflow/runs/get?run_id=doesnotexist")
    assert status == 404 and json.loads(out)["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_metric_history_downsampling_keeps_first_last_and_spikes(tracking):
    srv, _, c = tracking
    rid = c.create_run("0").info.run_id
    values = [1.0] * 5000
    values[1234] = 50.0
    for start in range(0, 5000, 1000):
        c.log_batch(rid, metrics=[Metric("curve", values[s], 1_700_000_000_000 + s, s)
                                  for s in range(start, start + 1000)])
    assert len(c.get_metric_history(rid, "curve")) == 5000
    status, _, out = http("GET", srv.base + f"/api/2.0/mlflow/metrics/get-history?run_id={rid}&metric_key=curve&max_points=100")
    pts = json.loads(out)["metrics"]
    assert status == 200 and len(pts) <= 100
    assert pts[0]["step"] == 0 and pts[-1]["step"] == 4999
    assert any(p["step"] == 1234 and p["value"] == 50.0 for p in pts)


def test_artifacts_go_through_the_proxy(tracking, tmp_path):
    _, _, c = tracking
    rid = c.create_run("0").info.run_id
    (tmp_path / "notes.txt").write_text("hello")
    sub = tmp_path / "plots"
    sub.mkdir()
    (sub / "a.csv").write_bytes(b"x,y\n1,2\n")
    (sub / "b.bin").write_bytes(bytes(range(256)) * 10)
    c.log_artifact(rid, str(tmp_path / "notes.txt"))
    c.log_artifacts(rid, str(sub), artifact_path="plots")
    top = c.list_artifacts(rid)
    assert [(f.path, f.is_dir) for f in top] == [("notes.txt", False), ("plots", True)]
    assert top[0].file_size == 5
    inner = c.list_artifacts(rid, "plots")
    assert [f.path for f in inner] == ["plots/a.csv", "plots/b.bin"]
    out = tempfile.mkdtemp()
    local = c.download_artifacts(rid, "plots", out)
    assert open(os.path.join(local, "b.bin"), "rb").read() == bytes(range(256)) * 10
    local = mlflow.artifacts.download_artifacts(run_id=rid, artifact_path="notes.txt", dst_path=out)
    assert open(local).read() == "hello"


def _cli(home, *args):
    out = subprocess.run([hangar_bin(), "--home", home, *args], check=True, capture_output=True, timeout=60)
    return out.stdout.decode()


def test_cli_reads_what_the_client_logged(tracking):
    _, home, c = tracking
    eid = c.create_experiment("exp-cli")
    a = c.create_run(eid, run_name="cli-a", start_time=1_700_000_000_000).info.run_id
    b = c.create_run(eid, run_name="cli-b", start_time=1_700_000_000_001).info.run_id
    c.log_batch(a, metrics=[Metric("acc", 0.7, 1, 0)], params=[Param("lr", "0.1")])
    c.log_batch(b, metrics=[Metric("acc", 0.9, 1, 0)], params=[Param("lr", "0.2")])
    exps = json.loads(_cli(home, "experiments", "list", "--json"))
    assert {"Default", "exp-cli"} <= {e["name"] for e in exps}
    runs = json.loads(_cli(home, "runs", "list", "--experiment", "exp-cli", "--json",
                           "--order-by", "metrics.acc ASC"))
    assert [r["info"]["run_name"] for r in runs] == ["cli-a", "cli-b"]
    runs = json.loads(_cli(home, "runs", "list", "-e", eid, "--filter", "params.lr = '0.2'", "--json"))
    assert [r["info"]["run_id"] for r in runs] == [b]
    shown = json.loads(_cli(home, "runs", "show", a, "--json"))
    assert shown["run"]["params"] == [{"key": "lr", "value": "0.1"}]
    cmp = json.loads(_cli(home, "runs", "compare", a, b, "--json"))
    rows = {r["key"]: r["values"] for r in cmp["rows"]}
    assert rows["lr"] == ["0.1", "0.2"] and rows["acc"] == [0.7, 0.9]
    assert "cli-a" in _cli(home, "runs", "compare", a, b)
    _cli(home, "runs", "delete", a)
    assert c.get_run(a).info.lifecycle_stage == "deleted"
    _cli(home, "runs", "delete", a, "--restore")
    assert c.get_run(a).info.lifecycle_stage == "active"
    bad = subprocess.run([hangar_bin(), "--home", home, "runs", "show", "nope"], capture_output=True)
    assert bad.returncode != 0 and b"not found" in bad.stderr


def _token(home, name, role, admin=None):
    env = dict(os.environ)
    if admin:
        env["HANGAR_TOKEN"] = admin
    out = subprocess.run([hangar_bin(), "--home", home, "registry", "token", "create",
                          "--name", name, "--role", role, "--json"],
                         check=True, capture_output=True, env=env).stdout
    return json.loads(out)["token"]


@pytest.fixture(scope="module")
def secured():
    home = tempfile.mkdtemp(prefix="hangar-mlflow-auth-")
    admin = _token(home, "admin", "admin")
    writer = _token(home, "writer", "writer", admin)
    srv = Server("--no-model", "--home", home, "--api-key", "sekrit", with_model=False)
    yield srv, home, admin, writer
    assert srv.stop() == 0


def test_api_keys_read_and_writer_tokens_log(secured, monkeypatch):
    srv, _, _, writer = secured
    c = MlflowClient(tracking_uri=srv.base)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    with pytest.raises(MlflowException) as e:
        c.search_experiments()
    assert error_code(e) == "UNAUTHENTICATED"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "sekrit")
    assert [x.name for x in c.search_experiments()] == ["Default"]
    with pytest.raises(MlflowException) as e:
        c.create_experiment("nope")
    assert error_code(e) == "PERMISSION_DENIED"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", writer)
    rid = c.create_run(c.create_experiment("secured")).info.run_id
    c.log_metric(rid, "m", 1.0)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "sekrit")
    assert c.get_run(rid).data.metrics == {"m": 1.0}
    with pytest.raises(MlflowException) as e:
        c.log_metric(rid, "m", 2.0)
    assert error_code(e) == "PERMISSION_DENIED"


def test_register_model_makes_a_hangar_registry_version(secured, monkeypatch, tmp_path):
    srv, home, admin, writer = secured
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", writer)
    mlflow.set_tracking_uri(srv.base)
    c = MlflowClient(tracking_uri=srv.base)
    rid = c.create_run("0").info.run_id
    model = tmp_path / "model"
    model.mkdir()
    write_tiny_gguf(str(model / "tiny.gguf"))
    (model / "MLmodel").write_text("flavors: {}\n")
    (model / "config.json").write_text("{}")
    c.log_artifacts(rid, str(model), artifact_path="model")
    mv = mlflow.register_model(f"runs:/{rid}/model", "tiny")
    assert mv.name == "tiny" and mv.version == "1" and mv.run_id == rid
    # It is a registry version whose metadata names the run.
    status, _, out = http("GET", srv.base + "/v1/registry/models/tiny/versions/1",
                          headers={"authorization": f"Bearer {writer}"})
    v = json.loads(out)
    assert status == 200 and v["metadata"]["mlflow.run_id"] == rid, out
    assert sorted(f["path"] for f in v["files"]) == ["config.json", "tiny.gguf"]

    assert c.get_registered_model("tiny").latest_versions[0].version == "1"
    assert [m.name for m in c.search_registered_models(filter_string="name LIKE 'ti%'")] == ["tiny"]
    assert [v.version for v in c.search_model_versions(f"run_id = '{rid}'")] == ["1"]
    staged = c.transition_model_version_stage("tiny", "1", "Staging")
    assert staged.current_stage == "Staging"
    assert [v.version for v in c.get_latest_versions("tiny", stages=["Staging"])] == ["1"]
    c.set_registered_model_alias("tiny", "champion", "1")
    assert c.get_model_version_by_alias("tiny", "champion").version == "1"
    assert c.get_model_version("tiny", "1").aliases == ["champion"]
    c.delete_registered_model_alias("tiny", "champion")
    with pytest.raises(MlflowException) as e:
        c.get_model_version_by_alias("tiny", "champion")
    assert error_code(e) == "RESOURCE_DOES_NOT_EXIST"
    # Production needs the registry's promoter role.
    with pytest.raises(MlflowException) as e:
        c.transition_model_version_stage("tiny", "1", "Production")
    assert error_code(e) == "PERMISSION_DENIED"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", admin)
    assert c.transition_model_version_stage("tiny", "1", "Production").current_stage == "Production"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", writer)

    # A run tagged with its base model gives the version registry lineage with the run.
    ft_run = c.create_run("0", tags={"hangar.base": "tiny@1", "hangar.derivation": "quantized"}).info.run_id
    c.log_artifacts(ft_run, str(model), artifact_path="model")
    ft = mlflow.register_model(f"runs:/{ft_run}/model", "tiny-q")
    status, _, out = http("GET", srv.base + f"/v1/registry/models/tiny-q/versions/{ft.version}",
                          headers={"authorization": f"Bearer {writer}"})
    lineage = json.loads(out)["lineage"]
    assert lineage == {"base_model": "tiny", "base_version": 1, "derivation": "quantized", "run": ft_run}, out

    # A model the registry would refuse (a pickle) is a clear INVALID_PARAMETER_VALUE.
    bad_run = c.create_run("0").info.run_id
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.pkl").write_bytes(b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00.")
    (bad / "MLmodel").write_text("flavors: {}\n")
    c.log_artifacts(bad_run, str(bad), artifact_path="model")
    with pytest.raises(MlflowException) as e:
        mlflow.register_model(f"runs:/{bad_run}/model", "pickled")
    assert error_code(e) == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException) as e:
        c.get_registered_model("never-registered")
    assert error_code(e) == "RESOURCE_DOES_NOT_EXIST"
    c.create_registered_model("empty-model", description="no versions yet")
    assert c.get_registered_model("empty-model").description == "no versions yet"
    c.delete_registered_model("empty-model")
    with pytest.raises(MlflowException) as e:
        c.get_registered_model("empty-model")
    assert error_code(e) == "RESOURCE_DOES_NOT_EXIST"


def test_logged_data_survives_a_killed_server_and_the_api_can_be_turned_off():
    home = tempfile.mkdtemp(prefix="hangar-mlflow-kill-")
    srv = Server("--no-model", "--home", home, with_model=False)
    c = MlflowClient(tracking_uri=srv.base)
    rid = c.create_run("0", run_name="survivor").info.run_id
    c.log_batch(rid, metrics=[Metric("m", float(s), 1_700_000_000_000 + s, s) for s in range(500)],
                params=[Param("p", "v")])
    srv.proc.kill()  # SIGKILL: no drain, no clean close of the database
    srv.proc.wait()
    srv = Server("--no-model", "--home", home, with_model=False)
    try:
        c = MlflowClient(tracking_uri=srv.base)
        run = c.get_run(rid)
        assert run.info.run_name == "survivor" and run.data.params == {"p": "v"}
        assert len(c.get_metric_history(rid, "m")) == 500
    finally:
        assert srv.stop() == 0
    srv = Server("--no-model", "--home", home, "--no-tracking-api", with_model=False)
    try:
        status, _, out = http("GET", srv.base + f"/api/2.0/mlflow/runs/get?run_id={rid}")
        err = json.loads(out)
        assert status == 404 and err["error_code"] == "ENDPOINT_NOT_FOUND", out
        assert "--no-tracking-api" in err["message"]
    finally:
        assert srv.stop() == 0
