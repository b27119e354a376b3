"""`skyreels serve --ray` on a local Ray cluster of a head and worker nodes (`ray.cluster_utils.Cluster`), the nodes
declaring GPUs they do not have (each actor, holding one, runs the tiny models on the CPU): jobs spread over the
nodes, each worker loading a model once and each node fetching it once into its own cache; a two-process
context-parallel job placed on one node; a node removed in the middle of an `extend` job at a chosen point (its
worker hangs in window 2, after the service has recorded window 1), the job finished on a node that joined later,
byte for byte; a service killed and started again losing nothing. No filesystem is shared: the workers run in a
scratch folder and ship each window back."""

import time
from contextlib import contextmanager

import pytest

from .service_helpers import TINY_EXTEND, Server, need_ray

ray = need_ray()

# Ray clusters and services of several actors: a few minutes.
pytestmark = pytest.mark.slow

# 64x64: 16 tokens a latent frame, which two processes split evenly.
EXTEND_64 = {**TINY_EXTEND, "height": 64, "width": 64, "frames": 45}
T2V = {"model": "tiny", "prompt": "a red fox", "steps": 2}


def start_cluster(**nodes):
    """A head without GPUs, and a node per keyword: its Ray arguments (num_gpus, env_vars, ...)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    return cluster, {name: cluster.add_node(num_cpus=1, **args) for name, args in nodes.items()}


def node_of(worker: str) -> str:
    return worker.split("-")[0]


@contextmanager
def worker_threads():
    """The library run here with the torch threads of a worker of these one-core nodes (ray_fleet.threads: 1). On
    the CPU the thread count changes how sums are split, so a frame may differ by a level, and the MP4 encoder
    makes more of that: the same thread count gives the same frames."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="class")
def cluster(hub_models, tmp_path_factory):
    """A head, node a with two GPUs and node b with one, each node with its own Hugging Face cache."""
    tmp = tmp_path_factory.mktemp("ray")
    cluster, nodes = start_cluster(a={"num_gpus": 2, "env_vars": {"HF_HOME": str(tmp / "hf-a")}},
                                   b={"num_gpus": 1, "env_vars": {"HF_HOME": str(tmp / "hf-b")}})
    try:
        yield cluster, nodes, tmp
    finally:
        cluster.shutdown()


@pytest.fixture(scope="class")
def two_nodes(cluster):
    cluster, nodes, tmp = cluster
    with Server(tmp / "state", "--model", "tiny", "--ray", cluster.address) as server:
        server.wait_workers(count=3)
        yield server, nodes, tmp


BATCH = """
model = "tiny"
steps = 2
[[job]]
command = "i2v"
image = "start.png"
prompt = "the waves roll in"
output = "out/i2v-1.mp4"
seed = 1
[[job]]
command = "i2v"
image = "start.png"
prompt = "the waves roll in"
output = "out/i2v-2.mp4"
seed = 2
"""


class TestOneClusterOfTwoNodes:
    def test_a_batch_spreads_over_the_nodes_and_delivers_each_video(self, cluster, image_file):
        import shutil
        import subprocess
        import sys

        import skyreels_cli as sk

        from .conftest import read_video

        cluster, nodes, tmp = cluster
        folder = tmp / "batch"
        folder.mkdir()
        shutil.copy(image_file, folder / "start.png")
        jobs = BATCH + "".join(f'[[job]]\ncommand = "t2v"\nprompt = "a red fox"\nseed = {seed}\n'
                               f'output = "out/t2v-{seed}.mp4"\n' for seed in range(6))
        (folder / "jobs.toml").write_text(jobs)
        done = subprocess.run([sys.executable, "-m", "skyreels_cli", "batch", str(folder / "jobs.toml"), "--ray",
                               cluster.address], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        started = [line for line in done.stderr.splitlines() if line.startswith("job ") and ", on " in line]
        assert len(started) == 8, done.stderr
        used = {line.split(", on ")[1].split(":")[0] for line in started}
        assert {node_of(w) for w in used} == {nodes["a"].node_id[:8], nodes["b"].node_id[:8]}, used
        assert "8 of 8 jobs done" in done.stderr and "queue and page: http://127.0.0.1:" in done.stderr
        assert sorted(done.stdout.split()) == sorted(str(folder / "out" / f"{kind}-{n}.mp4")
                                                     for kind, ns in (("i2v", (1, 2)), ("t2v", range(6)))
                                                     for n in ns)
        for name in ("hf-a", "hf-b"):  # each node fetched (here: built) the models into its own cache
            assert (tmp / name / "skyreels-tiny" / "df" / "model_index.json").is_file()
        # each video is the one the library makes here (an i2v's MP4 records its image's path: its frames)
        with worker_threads():
            library = sk.run(sk.Job("t2v", sk.Request(prompt="a red fox", steps=2, seed=3), model="tiny",
                                    load=sk.LoadOptions(device="cpu"), output=str(tmp / "t2v.mp4")), progress=False)
        # the frames: the tag the service writes names no server path, so the bytes may differ there
        a, b = (read_video(path)[0].astype(int) for path in (folder / "out" / "t2v-3.mp4", library.path))
        assert a.shape == b.shape and abs(a - b).max() == 0, abs(a - b).max()
        with worker_threads():
            i2v = sk.run(sk.Job("i2v", sk.Request(prompt="the waves roll in", steps=2, seed=2,
                                                  image=str(image_file)),
                                model="tiny", load=sk.LoadOptions(device="cpu"), output=str(tmp / "i2v.mp4")),
                         progress=False)
        assert (read_video(folder / "out" / "i2v-2.mp4")[0] == read_video(i2v.path)[0]).all()
        settings = (folder / "out" / "t2v-3.mp4.json").read_text()
        assert str(folder / "out" / "t2v-3.mp4") in settings and "skyreels-ray" not in settings

    def test_service_jobs_spread_over_the_nodes_and_each_worker_loads_the_model_once(self, two_nodes):
        server, nodes, tmp = two_nodes
        jobs = [server.submit({**T2V, "seed": seed}) for seed in range(9)]
        done = [server.wait(job["id"], "completed") for job in jobs]
        used = {job["worker"] for job in done}
        assert {node_of(w) for w in used} == {nodes["a"].node_id[:8], nodes["b"].node_id[:8]}, used
        workers = server.call("GET", "/health")[1]["workers"]
        assert len(workers) == 3 and all(w["models"] == ["tiny-df"] for w in workers if w["name"] in used)
        assert all(w["loads"] == 1 for w in workers if w["name"] in used), "each worker loaded the model once"
        assert len(used) < len(done), "so some worker made several videos with one load"
        for name in ("hf-a", "hf-b"):  # each node fetched (here: built) it into its own Hugging Face cache
            assert (tmp / name / "skyreels-tiny" / "df" / "model_index.json").is_file()
        # the video the library makes here, sent back from the node that made it
        import skyreels_cli as sk

        job = sk.Job("t2v", sk.Request(prompt="a red fox", steps=2, seed=0), model="tiny",
                     load=sk.LoadOptions(device="cpu"), output=str(tmp / "lib.mp4"))
        from .conftest import read_video

        served = tmp / "served.mp4"
        served.write_bytes(server.content(jobs[0]["id"]))
        # the frames: a client's video is tagged without server paths, so its bytes differ from the library's there
        with worker_threads():
            library = sk.run(job, progress=False).path
        a, b = (read_video(path)[0].astype(int) for path in (served, library))
        assert a.shape == b.shape and abs(a - b).max() == 0, abs(a - b).max()
        settings = server.content(jobs[0]["id"], "settings")
        assert settings["run"]["output"] == f"/v1/videos/{jobs[0]['id']}/content"
        assert "skyreels-ray" not in str(settings), "no worker's scratch path in what clients read"

    def test_a_context_parallel_job_runs_on_two_workers_of_one_node(self, two_nodes):
        server, nodes, _ = two_nodes
        group = server.wait(server.submit({**EXTEND_64, "gpus": 2})["id"], "completed")
        members = group["worker"].split("+")
        assert len(members) == 2 and {node_of(m) for m in members} == {nodes["a"].node_id[:8]}, group["worker"]
        alone = server.wait(server.submit(EXTEND_64)["id"], "completed")
        assert server.content(group["id"]) == server.content(alone["id"]), "the bytes of one process"
        assert server.content(group["id"], "settings")["run"]["runtime"]["parallel"]["processes"] == 2
        status, body, _ = server.call("POST", "/v1/videos", {**EXTEND_64, "gpus": 3})
        assert status == 400 and body["error"]["param"] == "gpus" and "2 workers" in body["error"]["message"]


def test_a_node_removed_mid_job_the_job_finishes_on_a_node_that_joined_with_the_same_bytes(hub_models, tmp_path):
    # Node x's worker hangs in the first denoising row of window 2: window 1 is with the service, and stays the last.
    cluster, nodes = start_cluster(x={"num_gpus": 1, "env_vars": {"SKYREELS_FAULT": "denoise_row:3:hang"}})
    try:
        with Server(tmp_path / "state", "--model", "tiny", "--ray", cluster.address) as server:
            [first] = server.wait_workers(count=1)
            job = server.submit(TINY_EXTEND)
            server.wait(job["id"], until=lambda j: j["windows_done"] == 1)
            folder = tmp_path / "state" / "videos" / job["id"]
            assert (folder / ".video.mp4.skyreels" / "state.pt").is_file(), "window 1's state is with the service"
            assert (folder / "video.partial.mp4").is_file()

            cluster.add_node(num_cpus=1, num_gpus=1)  # a node that joins later gets a worker
            joined = [w for w in server.wait_workers(count=2) if w["name"] != first["name"]]
            cluster.remove_node(nodes["x"])
            done = server.wait(job["id"], "completed")
            assert done["attempts"] == 2 and node_of(done["worker"]) == node_of(joined[0]["name"])
            events = server.events(job["id"])
            requeued = [d for k, d in events if k == "job" and d["status"] == "queued" and "reason" in d]
            assert len(requeued) == 1 and "its node left the cluster" in requeued[0]["reason"], requeued
            assert [d["done"] for k, d in events if k == "run_started"] == [0, 1], "on from window 2"
            straight = server.wait(server.submit(TINY_EXTEND)["id"], "completed")
            assert straight["attempts"] == 1
            assert server.content(job["id"]) == server.content(straight["id"]), "byte-identical"
            assert "worker " + first["name"] + " died (its node left the cluster)" in server.log()
    finally:
        cluster.shutdown()


def test_a_killed_service_finds_its_job_again_and_finishes_it_under_ray(hub_models, tmp_path):
    cluster, _ = start_cluster(a={"num_gpus": 1})
    state = tmp_path / "state"
    try:
        first = Server(state, "--model", "tiny", "--ray", cluster.address,
                       env={"SKYREELS_FAULT": "service_window_recorded:1"}).start()
        job = first.submit(TINY_EXTEND)
        assert first.proc.wait(timeout=300) == 137, first.log()
        assert (state / "videos" / job["id"] / ".video.mp4.skyreels" / "state.pt").is_file()
        started = time.monotonic()
        with Server(state, "--model", "tiny", "--ray", cluster.address) as again:
            done = again.wait(job["id"], "completed")
            assert done["attempts"] == 2
            assert [d["done"] for k, d in again.events(job["id"]) if k == "run_started"][-1] >= 1
            straight = again.wait(again.submit(TINY_EXTEND)["id"], "completed")
            assert again.content(job["id"]) == again.content(straight["id"])
        assert time.monotonic() - started < 240
    finally:
        cluster.shutdown()


def test_the_api_under_ray_local_is_the_services(hub_models, tmp_path):
    # A Ray of its own, started in the service's process; its workers inherit the service's environment, where
    # the fault makes the second job's worker hang in window 2 (rows 1-2: the clip; 3-4: window 1 of the extend).
    import skyreels_cli as sk

    from .conftest import read_video

    env = {"SKYREELS_FAULT": "denoise_row:5:hang"}
    with Server(tmp_path / "state", "--model", "tiny", "--ray", "local", env=env) as server:
        [worker] = server.call("GET", "/health")[1]["workers"]
        assert worker["ready"] and worker["device"] == "cpu"
        clip = server.wait(server.submit({**T2V, "seed": 3})["id"], "completed")
        library = sk.run(sk.Job("t2v", sk.Request(prompt="a red fox", steps=2, seed=3), model="tiny",
                                load=sk.LoadOptions(device="cpu"), output=str(tmp_path / "lib.mp4")), progress=False)
        assert server.content(clip["id"]) == library.path.read_bytes()
        kinds = [k for k, _ in server.events(clip["id"])]
        assert kinds[:3] == ["job", "job", "run_started"] and kinds[-2:] == ["run_finished", "job"]

        running = server.submit(TINY_EXTEND)
        server.wait(running["id"], until=lambda j: j["windows_done"] == 1)
        (tmp_path / "preview.mp4").write_bytes(server.content(running["id"], "preview"))
        frames, fps = read_video(tmp_path / "preview.mp4")
        assert len(frames) == 17 and frames.shape[1:3] == (48, 48) and fps == 24, "window 1, as the service holds it"
        status, body, _ = server.call("POST", "/v1/videos", {**T2V, "frames": -4})
        assert status == 400 and body["error"]["param"] == "frames"




def test_a_batch_run_again_after_a_crash_continues_its_queue_with_a_shared_dir(hub_models, tmp_path):
    import os
    import subprocess
    import sys

    import skyreels_cli as sk

    fields = {k: v for k, v in TINY_EXTEND.items() if k not in ("command", "model")}
    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in fields.items())
    (tmp_path / "jobs.toml").write_text(f'model = "tiny"\n[[job]]\ncommand = "extend"\n{lines}output = "fox.mp4"\n')
    shared, state = tmp_path / "shared", tmp_path / "state"
    command = [sys.executable, "-m", "skyreels_cli", "batch", str(tmp_path / "jobs.toml"), "--ray", "local",
               "--state-dir", str(state), "--shared-dir", str(shared)]
    # The batch dies (as SIGKILL would) right after its queue recorded window 1 of the job.
    died = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SKYREELS_FAULT": "service_window_recorded:1"})
    assert died.returncode == 137 and not (tmp_path / "fox.mp4").exists(), died.stderr[-2000:]
    [folder] = (shared / "videos").iterdir()
    assert (folder / ".video.mp4.skyreels" / "state.pt").is_file(), "the worker wrote into the shared folder"
    assert {p.name for p in state.iterdir()} <= {"queue.db", "queue.db-shm", "queue.db-wal"}, "the queue only"

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.strip() == str(tmp_path / "fox.mp4"), again.stderr[-2000:]
    assert "1 of 1 jobs done" in again.stderr
    library = sk.run(sk.Job("extend", sk.Request(**fields), model="tiny", load=sk.LoadOptions(device="cpu"),
                            output=str(tmp_path / "lib.mp4")), progress=False)
    assert (tmp_path / "fox.mp4").read_bytes() == library.path.read_bytes(), "continued to the same bytes"
    settings = (tmp_path / "fox.mp4.json").read_text()
    assert '"resumed": true' in settings and str(tmp_path / "fox.mp4") in settings


def test_a_batch_delivers_a_png_folder_as_it_does_without_ray(hub_models, tmp_path):
    """The same batch file runs anywhere: a PNG folder output too (the cluster's job makes its frames, the batch
    puts them at the output with their settings)."""
    import subprocess
    import sys

    import skyreels_cli as sk

    (tmp_path / "jobs.toml").write_text('model = "tiny"\nsteps = 2\n[[job]]\ncommand = "t2v"\nprompt = "a red fox"\nseed = 3\n'
                                        'output = "frames/"\n')
    done = subprocess.run([sys.executable, "-m", "skyreels_cli", "batch", str(tmp_path / "jobs.toml"), "--ray",
                           "local"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and "1 of 1 jobs done" in done.stderr, done.stderr[-2000:]
    library = sk.run(sk.Job("t2v", sk.Request(prompt="a red fox", steps=2, seed=3), model="tiny",
                            load=sk.LoadOptions(device="cpu"), output=str(tmp_path / "lib") + "/"), progress=False)
    frames = sorted(p.name for p in (tmp_path / "frames").glob("*.png"))
    assert len(frames) == 17 and frames == sorted(p.name for p in library.path.glob("*.png"))
    assert all((tmp_path / "frames" / n).read_bytes() == (library.path / n).read_bytes() for n in frames)
    assert str(tmp_path / "frames") in (tmp_path / "frames" / "settings.json").read_text()


def test_a_live_job_on_a_worker_with_its_own_copy_is_steered_at_the_promised_window(hub_models, tmp_path):
    """Without --shared-dir a worker runs a job in its own copy of the job's folder, which the service sees only as
    each window is sent back: a prompt change is promised by that worker (it alone knows the window it has
    started), kept by the service too, and lands at the window promised."""
    live = {**TINY_EXTEND, "live": True, "frames": 2000}
    with Server(tmp_path / "state", "--model", "tiny", "--ray", "local") as server:
        job = server.submit(live)
        server.wait(job["id"], until=lambda j: j["windows_done"] >= 1)
        status, change, _ = server.call("POST", f"/v1/videos/{job['id']}/prompt", {"prompt": "a blue bird"})
        assert status == 200, change
        promised = change["window"]
        server.wait(job["id"], until=lambda j: j["windows_done"] > promised + 1)
        assert server.call("POST", f"/v1/videos/{job['id']}/cancel")[0] == 200
        done = server.wait(job["id"], "completed")
        assert done["live"]["timeline"] == [{"window": 0, "prompt": "a red fox", "negative_prompt": None},
                                            {"window": promised, "prompt": "a blue bird", "negative_prompt": None}]
