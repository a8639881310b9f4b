"""Command lines sent to a shell or over SSH: no config or data value is ever parsed as shell
syntax, addresses are validated strictly, numbers are integers. Proven on a real loopback SSH
node whose folders (work, bin, keys) all carry shell metacharacters in their names."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from mqepi.lake.durable import sha256_file
from mqepi.quality import scoring
from mqepi.quant import toolchain
from mqepi.rig import config as cfg
from mqepi.rig import ops, ssh
from mqepi.rig.executor import CommandError, LocalExecutor, argv_words, file_name, int_arg, shell_join, shell_script
from mqepi.rig.loopback import LoopbackCluster, toml_string
from mqepi.rig.ssh import Remote

MARK = "PWNED"
#: Values that can legitimately appear in an argument (a path, a prompt, a file name).
HOSTILE = [
    "two words", "it's", 'say "hi"', f"$(touch {MARK})", f"`touch {MARK}`", f"; touch {MARK};", f"a && touch {MARK}",
    f"| touch {MARK}", f"> {MARK}", "$HOME", "${IFS}", "back\\slash", "new\nline", "tab\there", "-rf", "--", "*", "~",
    "ünïcødé ✓", "!", "#not a comment", "", " leading and trailing ", "%s\\n", "$1",
]
#: A folder or file name carrying most of them (one path component: no '/', no control character).
HOSTILE_NAME = f"we ird 'q' \"dq\" $(touch {MARK}) `touch {MARK}` ;touch {MARK}; & | > back\\slash $HOME"
#: The ways an address could smuggle a command or bind where it must not.
HOSTILE_ADDRESSES = [
    ("fe80::1%;touch X;", "scope id"), ("fe80::1%eth0", "scope id"), ("::ffff:0.0.0.0", "IPv4-mapped 0.0.0.0"),
    ("::ffff:10.0.0.1", "IPv6"), ("::1", "IPv6"), ("::", "IPv6"), ("0.0.0.0", "binds every interface"),
    ("0.0.0.7", "reserved"), ("255.255.255.255", "broadcast"), ("240.0.0.1", "reserved"), ("224.0.0.251", "multicast"),
    ("8.8.8.8", "not a loopback or private address"), ("100.64.0.1", "not a loopback or private address"),
    ("127.0.0.1;touch X", "dotted-quad"), ("127.0.0.1 && touch X", "dotted-quad"), ("$(touch X)", "dotted-quad"),
    ("`touch X`", "dotted-quad"), ("127.0.0.1\n", "dotted-quad"), ("127.0.0.1\ntouch X", "dotted-quad"),
    (" 127.0.0.1", "dotted-quad"), ("１２７.0.0.1", "not ASCII"), ("127.0.0.١", "not ASCII"), ("127.1", "dotted-quad"),
    ("010.0.0.1", "dotted-quad"), ("0x7f.0.0.1", "dotted-quad"), ("localhost", "dotted-quad"), ("", "dotted-quad"),
]
ECHO_ARGV = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]


def node_table(**fields) -> dict:
    """One [[nodes]] table with harmless defaults."""
    return {"name": "n", "role": "head", "host": "10.0.0.20", "user": "mqepi", "key": "~/.ssh/id_ed25519",
            "bin_dir": "/opt/mqepi/bin", "work_dir": "/srv/mqepi", **fields}


def toml_value(value) -> str:
    """A TOML value (strings escaped the way the loopback cluster writes them)."""
    return toml_string(value) if isinstance(value, str) else json.dumps(value)


def write_config(path: Path, worker: dict, *, private: bool = False, head: dict | None = None) -> Path:
    """A cluster TOML with one head and one worker table."""
    lines = [f"private_network = {str(private).lower()}"]
    for table in (node_table(**(head or {})), node_table(name="w", role="worker", **worker)):
        lines += ["", "[[nodes]]"] + [f"{key} = {toml_value(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def no_marker(*roots: Path) -> bool:
    """True when no file named like the marker exists under any root (nothing was executed)."""
    return not any(p.name.startswith(MARK) or p.name == "X" for root in roots for p in Path(root).rglob("*"))


# ------------------------------------------------------------------ the config parser


@pytest.mark.parametrize("private", [False, True])
@pytest.mark.parametrize(("address", "why"), HOSTILE_ADDRESSES)
def test_hostile_rpc_addresses_are_refused_naming_file_field_and_value(tmp_path, address, why, private):
    path = write_config(tmp_path / "cluster.toml", {"rpc_address": address}, private=private)
    if private and why in ("binds every interface", "not a loopback or private address"):
        # private_network = true allows these, as documented: the parser accepts them as written
        assert [n.rpc_address for n in cfg.load(path).nodes][1] == address
        return
    with pytest.raises(cfg.ClusterConfigError) as err:
        cfg.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: nodes[1]: field rpc_address {address!r} ")
    assert why in message


def test_the_head_and_quant_host_rpc_address_is_checked_too(tmp_path):
    path = write_config(tmp_path / "c.toml", {"rpc_address": "10.0.0.21"}, head={"rpc_address": "fe80::1%;touch X;"})
    with pytest.raises(cfg.ClusterConfigError, match=r"nodes\[0\]: field rpc_address 'fe80::1%;touch X;' has an IPv6 scope id"):
        cfg.load(path)
    data = {"quant_host": {k: v for k, v in node_table(rpc_address="::ffff:0.0.0.0").items() if k not in ("name", "role")},
            "nodes": [node_table()]}
    with pytest.raises(cfg.ClusterConfigError, match="c.toml: quant_host: field rpc_address '::ffff:0.0.0.0'"):
        cfg.parse(data, "c.toml")


@pytest.mark.parametrize(("field", "value", "why"), [
    ("host", "10.0.0.20;touch X", "neither an IPv4 address"), ("host", "$(touch X)", "neither an IPv4 address"),
    ("host", "fe80::1%eth0", "scope id"), ("host", "fe80::1%;touch X;", "scope id"), ("host", "nödé", "not ASCII"),
    ("host", "pi0\n", "control character"), ("host", "-oProxyCommand=x", "neither an IPv4 address"),
    ("host", "10.0.0.020", "neither an IPv4 address"), ("host", "[::1]", "not an IPv6 address"),
    ("user", "$(id)", "not a user name"), ("user", "pi;touch X", "not a user name"), ("user", "-l", "not a user name"),
    ("work_dir", "/srv/a\nb", "control character"), ("bin_dir", "/opt/a\x00b", "control character"),
    ("key", "~/.ssh/id\rx", "control character"), ("port", True, "not a TCP port"), ("port", 0, "not a TCP port"),
    ("rpc_port", True, "not a TCP port"), ("rpc_port", "50052", "not a TCP port"), ("rpc_port", 65536, "not a TCP port"),
    ("meter_channel", False, "not a non-negative integer"), ("memory_mb", -1, "not a non-negative integer"),
    ("rpc_address", 2130706433, "not a string"),
])
def test_hostile_host_fields_are_refused_naming_file_field_and_value(tmp_path, field, value, why):
    path = write_config(tmp_path / "cluster.toml", {"rpc_address": "10.0.0.21", field: value})
    with pytest.raises(cfg.ClusterConfigError) as err:
        cfg.load(path)
    assert str(err.value).startswith(f"{path}: nodes[1]: field {field}")
    assert repr(value) in str(err.value) and why in str(err.value)


def test_ordinary_configs_still_parse(tmp_path):
    for address in ("10.0.0.21", "172.16.5.4", "192.168.50.21", "127.0.0.1", "169.254.10.1"):
        config = cfg.load(write_config(tmp_path / "c.toml", {"rpc_address": address, "host": "pi1.local"}))
        assert config.workers[0].rpc_address == address and config.workers[0].host == "pi1.local"
    for address in ("0.0.0.0", "203.0.113.9"):  # the operator vouches for the network
        config = cfg.load(write_config(tmp_path / "c.toml", {"rpc_address": address}, private=True))
        assert config.workers[0].rpc_address == address
    weird = cfg.load(write_config(tmp_path / "c.toml", {"rpc_address": "10.0.0.21", "work_dir": f"/srv/{HOSTILE_NAME}",
                                                        "host": "2001:db8::7"}))
    assert weird.workers[0].work_dir == f"/srv/{HOSTILE_NAME}"  # legal in a path: quoted wherever it is used


# ------------------------------------------------------------------ the command builders


def test_every_builder_round_trips_through_shlex_split():
    for value in HOSTILE + [HOSTILE_NAME]:
        argv = ["tool", value, "--flag", value, 7]
        assert shlex.split(shell_join(argv)) == ["tool", value, "--flag", value, "7"]
        assert shlex.split(shell_script('printf "%s" "$1"', value, 3)) == ["sh", "-c", 'printf "%s" "$1"', "mqepi", value, "3"]
        assert shlex.split(ssh.sha256_command(value)) == ["sh", "-c", ssh.SHA256_SCRIPT, "mqepi", value]
        assert shlex.split(ssh.remove_command(value)) == ["rm", "-f", "--", value]
        assert shlex.split(ssh.move_command(value, value + "2")) == ["mv", "-f", "--", value, value + "2"]
        assert shlex.split(ssh.mkdir_command(value)) == ["mkdir", "-p", "--", value]
        assert shlex.split(ssh.background_command(["srv", value], value, {"LLAMA_CACHE": value})) == \
            ["sh", "-c", ssh.BACKGROUND_SCRIPT, "mqepi", value, f"LLAMA_CACHE={value}", "--", "srv", value]
        assert shlex.split(ops.port_probe_command(value, 50052)) == ["bash", "-c", ops.PORT_PROBE_SCRIPT, "mqepi", value, "50052"]
        host = cfg.Host("w", "127.0.0.1", 22, "u", "k", bin_dir=f"/b/{value}", work_dir=f"/w/{value}", role="worker",
                        rpc_address="10.0.0.21", rpc_port=50052)
        assert shlex.split(ops.check_command(host, ("llama-bench", value))) == \
            ["sh", "-c", ops.CHECK_SCRIPT, "mqepi", str(Path(f"/b/{value}").parent / ops.MANIFEST), f"/b/{value}", f"/w/{value}",
             "llama-bench", value]
        assert shlex.split(shell_join(ops.rpc_server_argv(host))) == \
            [f"{host.bin_dir.rstrip('/')}/ggml-rpc-server", "-H", "10.0.0.21", "-p", "50052", "-c"]
    assert shlex.split(ssh.alive_command(4242)) == ["sh", "-c", shlex.split(ssh.alive_command(4242))[2], "mqepi", "4242"]
    assert shlex.split(ssh.stop_command(4242))[-1] == "4242"
    assert scoring.thread_args(4) == ["-t", "4"] and scoring.thread_args(None) == []


@pytest.mark.parametrize("bad", [[1.5], [True], [None], [b"bytes"], ["a\x00b"], [], "rm -rf /", [["nested"]]])
def test_arguments_that_are_not_words_are_refused(bad):
    with pytest.raises(CommandError):
        shell_join(bad)
    with pytest.raises(CommandError):
        argv_words(bad)


def test_numbers_must_be_integers_and_pids_must_be_single_processes():
    assert int_arg(8, "threads", 1) == "8" and argv_words([Path("/a b"), 3]) == ["/a b", "3"]
    for value in ("4", "4; touch X", 4.0, True, None):
        with pytest.raises(CommandError, match="is not an integer"):
            int_arg(value, "threads", 1)
    with pytest.raises(CommandError, match="outside 1..65535"):
        int_arg(70000, "TCP port", 1, 65535)
    for pid in (-1, 0, 1, True, "12"):
        with pytest.raises(CommandError):
            ssh.stop_command(pid)
    with pytest.raises(CommandError):
        scoring.thread_args("4; touch X")
    with pytest.raises(CommandError, match="NAME_LIKE_THIS"):
        ssh.background_command(["srv"], "log", {"A;touch X": "1"})
    for name in ("../x", "a/b", "..", ".", "", "a\nb"):
        with pytest.raises(CommandError, match="not a single file name"):
            file_name(name)
    assert file_name(HOSTILE_NAME) == HOSTILE_NAME


def test_local_executor_passes_hostile_arguments_literally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a $(touch ...) would land
    ex = LocalExecutor(tmp_path / "work")
    assert json.loads(ex.stream([*ECHO_ARGV, *HOSTILE]).text) == HOSTILE
    assert json.loads(ex.run([*ECHO_ARGV, *HOSTILE]).text) == HOSTILE
    assert json.loads(ex.run(shell_join([*ECHO_ARGV, *HOSTILE])).text) == HOSTILE
    assert ex.run(shell_script('printf "%s|" "$@"', *HOSTILE)).text == "".join(f"{v}|" for v in HOSTILE)
    assert no_marker(tmp_path)


# ------------------------------------------------------------------ on a real loopback SSH node


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A two-node loopback cluster (head, worker) whose every folder has a hostile name."""
    tools = toolchain.ensure()
    base = tmp_path_factory.mktemp("rig-commands")
    root = base / HOSTILE_NAME
    tc = root / f"tool chain {HOSTILE_NAME}"
    tc.mkdir(parents=True)
    (tc / "bin").symlink_to(tools.bin_dir)
    shutil.copy2(Path(tools.bin_dir).parent / ops.MANIFEST, tc / ops.MANIFEST)
    with LoopbackCluster(2, tc / "bin", root=root, quant_host=False) as lc:
        yield lc, cfg.load(lc.config_path), base
    assert no_marker(base)


def test_hostile_arguments_reach_the_remote_side_literally(hostile):
    lc, config, base = hostile
    with Remote(config.head, config) as remote:
        assert json.loads(remote.stream([*ECHO_ARGV, *HOSTILE]).text) == HOSTILE
        assert json.loads(remote.run([*ECHO_ARGV, *HOSTILE]).text) == HOSTILE
        assert remote.run(shell_script('printf "%s|" "$@"', *HOSTILE)).text == "".join(f"{v}|" for v in HOSTILE)
        # the reported payload, passed where the address goes: probed literally, nothing runs
        assert remote.run(ops.port_probe_command("fe80::1%;touch X;", 50052)).text.strip() == "closed"
    assert no_marker(base)


def test_file_operations_keep_hostile_names_whole(hostile, tmp_path):
    lc, config, base = hostile
    local = tmp_path / HOSTILE_NAME
    local.write_bytes(b"payload " * 100)
    sha = sha256_file(local)
    with Remote(config.head, config) as remote:
        provided = remote.provide(local, sha)
        assert provided == f"{config.head.work_dir}/inputs/{HOSTILE_NAME}" and remote.sha256(provided) == sha
        assert remote.sha256(provided + ".missing") is None
        out = remote.work_path(HOSTILE_NAME, HOSTILE_NAME)
        remote.move(provided, out)
        assert remote.sha256(provided) is None and sha256_file(out) == sha
        remote.fetch(out, tmp_path / "back")
        assert (tmp_path / "back").read_bytes() == local.read_bytes()
        staged = remote.stage_file(HOSTILE_NAME, b"staged")
        assert Path(staged).read_bytes() == b"staged"
        remote.remove(out)
        assert not Path(out).exists() and Path(out).parent.is_dir()
        with pytest.raises(CommandError):
            remote.stage_file("../escape", b"x")
    assert no_marker(base)


def test_health_check_reads_hostile_bin_and_work_folders(hostile):
    lc, config, base = hostile
    reports = ops.check(config)
    assert [r.name for r in reports] == ["node0", "node1"]
    assert all(r.reachable and not r.problems and not r.binaries_missing for r in reports), [r.problems for r in reports]
    assert {r.llama_cpp_commit for r in reports} == {toolchain.ensure().llama_cpp_commit}
    assert no_marker(base)


def test_deploy_ledger_keeps_hostile_paths_whole_and_removes_only_its_own(hostile, tmp_path):
    lc, config, base = hostile
    models = f"{config.head.work_dir}/models"
    victim = Path(config.head.work_dir) / "not deployed.gguf"
    victim.write_bytes(b"keep me")
    deployed = []
    for i in range(3):
        f = tmp_path / f"m{i} {HOSTILE_NAME}.gguf"
        f.write_bytes(bytes([i]) * 64)
        deployed.append(ops.deploy(config, f, sha256_file(f)))
        if i == 0:  # a foreign line in the ledger is never acted on
            with open(f"{models}/.deployed", "a") as ledger:
                ledger.write(f"{victim}\n{models}/../{victim.name}\n{models}/.deployed\n")
    assert deployed[2].removed == [deployed[0].path]
    assert not Path(deployed[0].path).exists() and Path(deployed[1].path).exists() and Path(deployed[2].path).exists()
    assert Path(f"{models}/.deployed").read_text().splitlines() == [deployed[1].path, deployed[2].path]
    assert victim.read_bytes() == b"keep me"
    assert no_marker(base)


def test_rpc_worker_starts_with_hostile_folders_and_stops(hostile):
    lc, config, base = hostile
    worker = config.workers[0]
    work = Path(worker.work_dir)
    with ops.rpc_workers(config) as endpoints:
        assert endpoints == [f"127.0.0.1:{worker.rpc_port}"]
        pid = int((work / "rpc-server.log.pid").read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert [a.decode() for a in argv] == ops.rpc_server_argv(worker)
        env = dict(e.decode().split("=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if e)
        assert env["LLAMA_CACHE"] == f"{worker.work_dir}/rpc-cache"
        assert (work / "rpc-server.log").is_file()
    state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] if Path(f"/proc/{pid}").exists() else "gone"
    assert state in ("Z", "X", "gone")  # stopped (a zombie until this machine's init reaps it)
    assert no_marker(base)


def test_an_address_bypassing_the_parser_is_refused_before_anything_runs(hostile):
    lc, config, base = hostile
    worker = config.workers[0]
    bad = cfg.Host(worker.name, worker.host, worker.port, worker.user, worker.key, worker.bin_dir, worker.work_dir,
                   role="worker", rpc_address="fe80::1%;touch X;", rpc_port=worker.rpc_port)
    forged = cfg.ClusterConfig(config.path, (config.head, bad), None, config.known_hosts)
    with pytest.raises(cfg.ClusterConfigError, match="scope id"):
        with ops.rpc_workers(forged):
            pass
    assert not (Path(worker.work_dir) / "X").exists() and no_marker(base)
    assert os.path.isdir(worker.work_dir)
