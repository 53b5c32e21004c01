"""``mirage submit`` / ``mirage jobs`` (jobs/submit.py): job building offline, and a real local Ray head.

The slow test starts its own head on loopback ports with a short --temp-dir (Unix socket paths must stay
under 107 chars), submits jobs through the same functions the CLI uses, and stops that head by process
group / PID at the end (never `ray stop`, which would kill every Ray of this user).
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from servers import free_port, wait_for_http

from jobs import submit as sub
from jobs.cli import build_parser, main, run_inline_config

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# Offline: environment, runtime_env, config transport, arguments.
# ----------------------------------------------------------------------------------------------

def test_forwarded_env_takes_aws_mlflow_and_mirage_variables_only():
    environ = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_DEFAULT_REGION": "us-west-2",
               "AWS_ENDPOINT_URL": "http://s3.local:9000", "MLFLOW_TRACKING_URI": "http://mlflow:5000",
               "MIRAGE_CACHE": "/cache", "MIRAGE_EMPTY": "", "MIRAGE_RAY_ADDRESS": "http://head:8265",
               "AWS_PROFILE": "dev", "HOME": "/root", "PATH": "/bin", "RAY_ADDRESS": "x"}
    assert sub.forwarded_env(environ) == {
        "AWS_ACCESS_KEY_ID": "AK", "AWS_DEFAULT_REGION": "us-west-2", "AWS_ENDPOINT_URL": "http://s3.local:9000",
        "AWS_SECRET_ACCESS_KEY": "SK", "MIRAGE_CACHE": "/cache", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}


def _train_yaml(name: str) -> str:
    """A valid `mirage train` config whose paths are URIs (nothing to resolve)."""
    return (f"name: {name}\nstorage_path: s3://b/train\ndata: {{shards: s3://b/shards}}\n"
            "stages: [{name: branch, steps: 1, lr: 1.0e-3}]\n")


@pytest.fixture
def fake_repo(tmp_path):
    """A small working dir: code, a config, a git-ignored config, big files in and out of pruned dirs."""
    repo = tmp_path / "repo"
    (repo / "mirage_model").mkdir(parents=True)
    (repo / "mirage_model" / "cli.py").write_text("# cli\n")
    (repo / "configs").mkdir()
    (repo / "configs" / "job.yaml").write_text(_train_yaml("tracked"))
    (repo / "configs" / "local.yaml").write_text(_train_yaml("ignored"))
    (repo / ".gitignore").write_text("configs/local.yaml\n")
    (repo / "data").mkdir()
    (repo / "data" / "big.bin").write_bytes(b"x" * 4096)
    (repo / "data" / "odd[1].bin").write_bytes(b"x" * 4096)
    (repo / "data" / "small.txt").write_text("ok")
    for pruned in ("runs", ".venv", ".git"):
        (repo / pruned).mkdir()
        (repo / pruned / "huge.bin").write_bytes(b"x" * 4096)
    return repo


def test_runtime_env_uploads_the_working_dir_without_venv_runs_git_and_large_files(fake_repo):
    spec = sub.build_job(["train"], fake_repo / "configs" / "job.yaml", working_dir=fake_repo,
                         env={"EXTRA": "1"}, environ={"AWS_ACCESS_KEY_ID": "AK", "HOME": "/root"},
                         max_file_bytes=1024, submission_id="mirage-train-test")
    renv = spec.runtime_env
    assert renv["working_dir"] == str(fake_repo.resolve())
    for pattern in (".git", ".venv", "/runs", "__pycache__", "*.egg-info"):
        assert pattern in renv["excludes"]
    assert "/data/big.bin" in renv["excludes"]                       # large file, anchored
    assert "/data/odd\\[1\\].bin" in renv["excludes"]                # ... and glob-escaped
    assert not sub.is_uploaded(fake_repo / "data" / "odd[1].bin", fake_repo, renv["excludes"])
    assert sub.is_uploaded(fake_repo / "data" / "small.txt", fake_repo, renv["excludes"])
    assert not [e for e in renv["excludes"] if "huge" in e]          # pruned dirs are not walked
    assert renv["env_vars"] == {"AWS_ACCESS_KEY_ID": "AK", "EXTRA": "1"}
    # The config is inside the upload: referenced by its relative path, nothing inline.
    assert spec.entrypoint == "python -m jobs.cli train --config configs/job.yaml"
    assert spec.submission_id == "mirage-train-test"
    assert spec.metadata["mirage_command"] == "train"


def test_default_submission_id_names_the_kind():
    spec = sub.build_job(["preprocess", "--source", "s3://b/v", "--output", "s3://b/o"], None, working_dir=None,
                         environ={})
    assert spec.submission_id.startswith("mirage-preprocess-")
    assert spec.runtime_env == {}
    assert spec.entrypoint == "python -m jobs.cli preprocess --source s3://b/v --output s3://b/o"


def test_ray_excludes_match_what_the_walker_prunes(fake_repo):
    """The patterns must prune the directories themselves (Ray's packager checks each path)."""
    spec = sub.build_job(["synth-data", "--out", "/tmp/x"], None, working_dir=fake_repo, environ={})
    for path in ("runs", ".venv", ".git", "mirage_model/__pycache__", "pkg.egg-info"):
        assert not sub.is_uploaded(fake_repo / path, fake_repo, spec.runtime_env["excludes"]), path
    assert sub.is_uploaded(fake_repo / "mirage_model" / "cli.py", fake_repo, spec.runtime_env["excludes"])


@pytest.mark.parametrize("where", ["outside", "gitignored", "no-working-dir"])
def test_config_not_in_the_upload_travels_inline_and_is_materialized(fake_repo, tmp_path, monkeypatch, where):
    if where == "outside":
        config, wd = tmp_path / "elsewhere.yaml", fake_repo
        config.write_text(_train_yaml("outside"))
    elif where == "gitignored":
        config, wd = fake_repo / "configs" / "local.yaml", fake_repo
    else:
        config, wd = fake_repo / "configs" / "job.yaml", None
    spec = sub.build_job(["train", "--workers", "2"], config, working_dir=wd, environ={})
    assert spec.entrypoint == "python -m jobs.cli --inline-config train --workers 2"
    env = spec.runtime_env["env_vars"]
    assert base64.b64decode(env[sub.INLINE_CONFIG_ENV]) == config.read_bytes()
    assert env[sub.INLINE_NAME_ENV] == config.name
    assert ("working_dir" in spec.runtime_env) == (wd is not None)

    # Cluster side: the entrypoint writes the bytes to a file and runs `mirage train --config FILE ...`.
    seen = {}

    def fake_main(argv):
        seen["argv"] = argv
        seen["text"] = Path(argv[2]).read_text()
        return 0

    monkeypatch.setattr("jobs.cli.main", fake_main)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert run_inline_config(["train", "--workers", "2"]) == 0
    assert seen["argv"][:2] == ["train", "--config"] and seen["argv"][3:] == ["--workers", "2"]
    assert Path(seen["argv"][2]).name == config.name and seen["text"] == config.read_text()
    shutil.rmtree(Path(seen["argv"][2]).parent)


def test_inline_entrypoint_module_runs_as_a_script(tmp_path):
    """`python -m jobs.cli --inline-config ...` is a real entrypoint: the config it writes is the one
    `mirage preprocess` reads (which then fails fast on the missing source named in it)."""
    config = f"source: {tmp_path}/no-videos-here\noutput: {tmp_path}/out\n".encode()
    env = dict(os.environ, **{sub.INLINE_CONFIG_ENV: base64.b64encode(config).decode(), sub.INLINE_NAME_ENV: "c.yaml"})
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "--inline-config", "preprocess"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert "config c.yaml written to" in r.stdout
    assert r.returncode == 2 and "no-videos-here" in r.stderr, r.stderr


def test_env_pairs_and_their_errors():
    assert sub.parse_env_pairs(["A=1", "B_2=x=y", "C="]) == {"A": "1", "B_2": "x=y", "C": ""}
    for bad in ("FOO", "=x", "1A=b", "A-B=c"):
        with pytest.raises(sub.SubmitError, match="KEY=VALUE"):
            sub.parse_env_pairs([bad])


def test_address_resolution():
    assert sub.resolve_address("http://h:8265/", {}) == "http://h:8265"
    assert sub.resolve_address("h:8265", {}) == "http://h:8265"
    env = {"MIRAGE_RAY_ADDRESS": "http://m:8265", "RAY_ADDRESS": "http://r:8265"}
    assert sub.resolve_address(None, env) == "http://m:8265"
    assert sub.resolve_address(None, {"RAY_ADDRESS": "r:8265"}) == "http://r:8265"
    assert sub.resolve_address("http://x:1", env) == "http://x:1"
    with pytest.raises(sub.SubmitError, match="--address"):
        sub.resolve_address(None, {})


def test_cli_registers_submit_and_jobs():
    parser = build_parser()
    args = parser.parse_args(["submit", "generate-batch", "--config", "c.yaml", "--no-working-dir",
                              "--env", "A=1", "--no-wait"])
    assert args.func is sub._cmd_submit and args.no_working_dir and args.env == ["A=1"] and args.no_wait
    for action in ("status", "logs", "stop"):
        assert parser.parse_args(["jobs", action, "raysubmit_1"]).job_id == "raysubmit_1"
    assert parser.parse_args(["jobs", "list"]).func is sub._cmd_list
    with pytest.raises(SystemExit):
        parser.parse_args(["submit", "trajectory", "--config", "c.yaml"])  # not a cluster job
    with pytest.raises(SystemExit):
        parser.parse_args(["submit", "train", "--config", "c", "--working-dir", ".", "--no-working-dir"])


@pytest.mark.parametrize("status,rc", [("SUCCEEDED", 0), ("FAILED", 1), ("STOPPED", 1), (None, 0)])
def test_cli_submit_builds_the_job_and_maps_the_final_status_to_the_exit_code(monkeypatch, status, rc):
    seen = {}

    def fake_submit(address, spec, *, wait=True, out=None, timeout=None):
        seen.update(address=address, spec=spec, wait=wait)
        return "mirage-x", status

    class Remote:  # a dashboard that cannot list its hosts: the cluster counts as remote
        def _do_request(self, *args):
            raise ConnectionError("no")

    monkeypatch.setattr(sub, "submit", fake_submit)
    monkeypatch.setattr(sub, "make_client", lambda address: Remote())
    config = ROOT / "configs" / "preprocess" / "default.yaml"
    argv = ["submit", "preprocess", "--config", str(config), "--address", "h:8265", "--env", "A=1",
            "--no-forward-env", "--", "--source", "s3://b/raw/", "--output", "s3://b/shards/"]
    if status is None:
        argv.insert(2, "--no-wait")
    assert main(argv) == rc
    spec = seen["spec"]
    assert isinstance(seen["address"], Remote) and seen["wait"] is (status is not None)
    assert spec.entrypoint == ("python -m jobs.cli preprocess --config configs/preprocess/default.yaml "
                               "--source s3://b/raw/ --output s3://b/shards/")
    assert spec.runtime_env["env_vars"] == {"A": "1"} and spec.runtime_env["working_dir"] == str(ROOT)


def _sets(spec: sub.JobSpec) -> dict[str, str]:
    """The ``--set KEY=VALUE`` items of the job's command, read as the job reads them (YAML)."""
    import shlex

    import yaml

    args = shlex.split(spec.entrypoint)
    return {k: yaml.safe_load(v) for k, _, v in (args[i + 1].partition("=") for i, a in enumerate(args) if a == "--set")}


def test_relative_paths_become_absolute_for_a_head_on_this_machine(tmp_path, monkeypatch):
    """The README's tour: `mirage submit train --config configs/train/tiny.yaml` to a local head. The
    shards, the checkpoints and the MLflow store are where a local `mirage train` would put them."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = ROOT / "configs" / "train" / "tiny.yaml"
    spec = sub.build_job(["train", "--name", "t"], config, working_dir=ROOT, local_cluster=True, cwd=tmp_path)
    assert _sets(spec) == {"data.shards": str(tmp_path / "runs/demo/shards"),
                           "storage_path": str(tmp_path / "runs/train")}
    assert spec.runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/runs/mlflow.db"
    assert spec.entrypoint.startswith("python -m jobs.cli train --config configs/train/tiny.yaml --name t --set ")
    assert any("data.shards: runs/demo/shards -> " in n for n in spec.notes)

    # a short flag and a --set are resolved too; URIs, absolute paths and keywords are left alone
    spec = sub.build_job(["preprocess", "--source", "videos", "--set", "output=s3://b/shards",
                          "--set", "latents.vae=tiny", "--set", "mlflow.tracking_uri=sqlite:///db/m.db"],
                         None, working_dir=None, local_cluster=True, cwd=tmp_path, forward_env=False)
    assert _sets(spec)["source"] == str(tmp_path / "videos")
    assert _sets(spec)["mlflow.tracking_uri"] == f"sqlite:///{tmp_path}/db/m.db"
    assert _sets(spec)["output"] == "s3://b/shards" and _sets(spec)["latents.vae"] == "tiny"  # as given
    assert "MLFLOW_TRACKING_URI" not in spec.runtime_env.get("env_vars", {})  # the config's store wins


def test_a_remote_cluster_gets_uploaded_inputs_relative_to_the_upload_and_refuses_the_rest(fake_repo, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (fake_repo / "runs" / "shards").mkdir()
    (fake_repo / "data" / "videos").mkdir()

    def job(*args, cwd=fake_repo, environ=None):
        return sub.build_job(["preprocess", *args], None, working_dir=fake_repo, cwd=cwd, environ=environ or {})

    spec = job("--source", "videos", "--output", "s3://b/out", cwd=fake_repo / "data")
    assert _sets(spec) == {"source": "data/videos"}  # the job's working directory is the upload's root
    assert any("cluster's $MLFLOW_TRACKING_URI" in n for n in spec.notes)
    assert _sets(job("--source", "data/videos", "--output", "s3://b/out")) == {}  # already right
    with pytest.raises(sub.SubmitError, match=r"source: 'runs/shards' is a relative path .* not uploaded"):
        job("--source", "runs/shards", "--output", "s3://b/out")  # runs/ stays home
    with pytest.raises(sub.SubmitError, match=r"source: 'nowhere' .* does not exist here"):
        job("--source", "nowhere", "--output", "s3://b/out")
    with pytest.raises(sub.SubmitError, match=r"output: 'out' .* deleted with it.*--set output=s3://"):
        job("--source", "s3://b/in", "--output", "out")
    assert _sets(job("--source", "/shared/videos", "--output", "/shared/shards")) == {}
    with pytest.raises(sub.SubmitError, match=r"\$MLFLOW_TRACKING_URI: 'mlflow.db'"):
        job("--source", "s3://b/in", "--output", "s3://b/out", environ={"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"})
    spec = job("--source", "s3://b/in", "--output", "s3://b/out", environ={"MLFLOW_TRACKING_URI": "http://ml:5000"})
    assert spec.runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://ml:5000"
    with pytest.raises(sub.SubmitError, match="does not validate"):
        job("--set", "no_such_key=1")


def test_every_config_job_can_be_submitted():
    from jobs.config import JOB_CONFIGS

    assert set(sub.JOB_KINDS) == set(JOB_CONFIGS)
    for kind in JOB_CONFIGS:
        assert build_parser().parse_args(["submit", kind]).kind == kind


def test_cli_errors_are_clear(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MIRAGE_RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = ROOT / "configs" / "preprocess" / "default.yaml"
    assert main(["submit", "train", "--config", str(tmp_path / "missing.yaml"), "--address", "http://h:1"]) == 2
    assert "config file not found" in capsys.readouterr().err

    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    assert main(["submit", "preprocess", "--config", str(config), "--address", dead]) == 2
    err = capsys.readouterr().err
    assert dead in err and "ray start --head" in err and time.monotonic() - t0 < 10

    assert main(["jobs", "status", "raysubmit_x", "--address", dead]) == 2
    assert dead in capsys.readouterr().err

    assert main(["jobs", "list"]) == 2
    assert "MIRAGE_RAY_ADDRESS" in capsys.readouterr().err

    assert main(["submit", "train", "--config", str(config), "--env", "NOPE", "--address", dead]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err

    assert main(["submit", "train", "--config", str(config), "--address", dead, "--", "--config", "x"]) == 2
    assert "--config" in capsys.readouterr().err

    assert main(["submit", "train", "--config", str(config), "--working-dir", str(tmp_path / "nope"),
                 "--address", dead]) == 2
    assert "not a directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# A real Ray head on loopback.
# ----------------------------------------------------------------------------------------------

def _port_range(n: int) -> int:
    """First port of ``n`` consecutive free loopback ports."""
    for _ in range(200):
        base = random.randint(20000, 60000 - n)
        ok = True
        for port in range(base, base + n):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range")


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return True
    return (Path.home() / ".ray" / "auth_token").is_file()


def _stop_head(proc: subprocess.Popen, temp_dir: str) -> list[str]:
    """Stop our head: its process group, every descendant seen before, anything naming our temp dir.
    Returns what is still alive afterwards (should be nothing)."""
    import psutil

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # start_new_session: the group id is the `ray start` pid
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)
    ours = list(descendants)
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if temp_dir in " ".join(p.info["cmdline"] or []):
                ours.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in ours:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(ours, timeout=5)
    alive = []
    for p in ours:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture(scope="module")
def ray_head():
    """``{"address", "token_auth"}`` of a fresh single-node head on 127.0.0.1 (2 CPUs); stopped by PID."""
    ray_exe = Path(sys.executable).with_name("ray")
    if not ray_exe.exists():
        pytest.skip("the `ray` CLI is not installed next to this Python")
    temp_dir = tempfile.mkdtemp(dir="/tmp", prefix="rt")
    ports: set[int] = set()
    while len(ports) < 10:
        ports.add(free_port())
    worker_lo = _port_range(40)
    gcs, dash, client, node_mgr, obj_mgr, agent, agent_grpc, renv, metrics, _ = sorted(ports)
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(key, None)
    token_auth = env.get("RAY_AUTH_MODE", "token" if _token_available() else "disabled") == "token"
    env["RAY_AUTH_MODE"] = "token" if token_auth else "disabled"
    cmd = [str(ray_exe), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
           "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(renv), "--metrics-export-port", str(metrics),
           "--min-worker-port", str(worker_lo), "--max-worker-port", str(worker_lo + 39),
           "--num-cpus", "2", "--object-store-memory", str(100 * 1024 * 1024), "--temp-dir", temp_dir,
           "--disable-usage-stats", "--block"]
    log_path = Path(temp_dir) / "head.log"
    saved_auth_mode = os.environ.get("RAY_AUTH_MODE")
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        wait_for_http(address + "/api/version", proc, "ray start --head",  # 401 with token auth: up
                      diagnostics=lambda: log_path.read_text()[-3000:])
        yield {"address": address, "token_auth": token_auth}
    finally:
        alive = _stop_head(proc, temp_dir)
        if saved_auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)  # the client side may have switched it on
        else:
            os.environ["RAY_AUTH_MODE"] = saved_auth_mode
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not alive, f"processes of the test head still alive: {alive}"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_jobs_run_on_a_real_head(ray_head, tmp_path, capsys, monkeypatch):
    address = ray_head["address"]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray_head["token_auth"]:  # the head really demands the token that the client sends
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(address + "/api/jobs/", timeout=5)
        assert exc.value.code in (401, 403)

    # 1. A job that succeeds, uploaded from the repo root through the code path of `mirage submit`.
    out_dir = tmp_path / "synth"
    monkeypatch.setenv("MIRAGE_TEST_MARKER", "forwarded")
    spec = sub.build_job(["synth-data", "--out", str(out_dir), "--n", "1", "--frames", "9", "--height", "64",
                          "--width", "64"], None, working_dir=sub.default_working_dir())
    assert spec.runtime_env["env_vars"]["MIRAGE_TEST_MARKER"] == "forwarded"
    job_id, status = sub.submit(address, spec, timeout=90)
    out = capsys.readouterr().out
    assert status == "SUCCEEDED", out
    assert f"submitted job {job_id}" in out and "wrote 1 synthetic videos" in out   # streamed logs
    assert f"job {job_id}: SUCCEEDED" in out
    assert list(out_dir.glob("*.mp4"))

    assert main(["jobs", "status", job_id, "--address", address]) == 0
    status_out = capsys.readouterr().out
    assert f"{job_id}: SUCCEEDED" in status_out and "jobs.cli synth-data" in status_out
    assert main(["jobs", "logs", job_id, "--address", address]) == 0
    assert "wrote 1 synthetic videos" in capsys.readouterr().out
    client = sub.make_client(address)
    assert client.get_job_info(job_id).runtime_env["working_dir"].startswith("gcs://")

    # 2. `mirage submit` itself: an inline config (outside the repo) reaches the cluster; the job fails
    #    there on the missing source, and the CLI exits 1 with the job's own error in the streamed logs.
    config = tmp_path / "pre.yaml"
    config.write_text(f"source: {tmp_path}/no-videos-here\noutput: {tmp_path}/shards\n")
    rc = main(["submit", "preprocess", "--config", str(config), "--address", address,
               "--submission-id", "mirage-test-preprocess"])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "config pre.yaml written to" in out and "no-videos-here" in out
    assert "job mirage-test-preprocess: FAILED" in out

    assert main(["jobs", "list", "--address", address]) == 0
    listing = capsys.readouterr().out
    assert job_id in listing and "mirage-test-preprocess" in listing and "FAILED" in listing

    # 3. --no-wait, then stop a running job.
    long = sub.build_job(["synth-data", "--out", str(tmp_path / "long"), "--n", "200"], None, working_dir=None)
    long_id, status = sub.submit(address, long, wait=False)
    assert status is None and f"mirage jobs logs {long_id} --follow" in capsys.readouterr().out
    deadline = time.monotonic() + 30
    while str(client.get_job_status(long_id)) == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert main(["jobs", "stop", long_id, "--address", address]) == 0
    assert "stop requested" in capsys.readouterr().out
    assert sub.wait_for_job(client, long_id, timeout=30) == "STOPPED"
