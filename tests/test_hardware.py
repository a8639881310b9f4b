"""Hardware identity (mqepi.rig.hardware): the cluster config's [hardware] table, the profile's
hash, completing a profile by probing, and what the run events carry."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pandera.polars as pa
import polars as pl
import pytest
from factories import rows_for

from mqepi.lake.store import Lake
from mqepi.results import sql
from mqepi.rig import config as cfg
from mqepi.rig import hardware
from mqepi.rig.executor import Result
from mqepi.schemas import EVENT_TYPES, RUN_KEYS, EventSpec
from mqepi.schemas import events as ev
from mqepi.schemas.events import RunBound

NODE = '''
[[nodes]]
name = "pi0"
role = "head"
host = "10.0.0.20"
user = "pi"
key = "/k"
bin_dir = "/b"
work_dir = "/w"
'''
PROFILE = hardware.HardwareProfile(node_model="Raspberry Pi 5 Model B Rev 1.0", ram_mb=8192,
                                   os="Debian GNU/Linux 12 (bookworm)", kernel="6.6.51+rpt-rpi-2712",
                                   llama_cpp_commit="b4153", meter_id="epi-meter-0", meter_firmware="1.2.0",
                                   cooling="active cooler")


def load(tmp_path, hardware_toml: str) -> cfg.ClusterConfig:
    path = tmp_path / "cluster.toml"
    path.write_text(NODE + hardware_toml)
    return cfg.load(path)


def test_hardware_table_parses(tmp_path):
    conf = load(tmp_path, '''
[hardware]
name = "rack-a"
node_model = "Raspberry Pi 5 Model B Rev 1.0"
ram_mb = 8192
os = "Debian GNU/Linux 12 (bookworm)"
kernel = "6.6.51+rpt-rpi-2712"
llama_cpp_commit = "b4153"
meter_id = "epi-meter-0"
meter_firmware = "1.2.0"
cooling = "active cooler"
''')
    assert conf.hardware == dataclasses.replace(PROFILE, name="rack-a")
    assert load(tmp_path, "").hardware is None
    assert load(tmp_path, '[hardware]\ncooling = "passive"\n').hardware == hardware.HardwareProfile(cooling="passive")


@pytest.mark.parametrize("table, message", [
    ('fan = "yes"', "hardware: unknown field 'fan'"),
    ('ram_mb = "8192"', "hardware: field ram_mb '8192' is not a positive integer"),
    ("ram_mb = 0", "hardware: field ram_mb 0 is not a positive integer"),
    ("ram_mb = true", "hardware: field ram_mb True is not a positive integer"),
    ("kernel = 6", "hardware: field kernel is required (a non-empty string), got 6"),
    ('os = "a\\nb"', "hardware: field os 'a\\nb' contains a control character"),
])
def test_hardware_table_refuses_bad_values_naming_file_field_and_value(tmp_path, table, message):
    with pytest.raises(cfg.ClusterConfigError) as err:
        load(tmp_path, f"[hardware]\n{table}\n")
    assert str(err.value).startswith(f"{tmp_path / 'cluster.toml'}: ") and message in str(err.value)


def test_hardware_id_is_stable_and_moves_with_every_field_but_the_label():
    hw = hardware.hardware_id(PROFILE)
    assert hw == PROFILE.hardware_id and hw.startswith("hw-") and len(hw) == 15
    assert hardware.hardware_id(dataclasses.replace(PROFILE)) == hw  # a copy: the same id
    assert hardware.hardware_id(dataclasses.replace(PROFILE, name="renamed")) == hw  # the label is not hashed
    # the hash of the canonical JSON of the eight fields (sorted keys), pinned
    canonical = json.dumps(PROFILE.identity(), sort_keys=True, separators=(",", ":"))
    assert set(json.loads(canonical)) == set(hardware.PROFILE_FIELDS)
    assert hw == "hw-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]
    changed = {"node_model": "Raspberry Pi 4", "ram_mb": 4096, "os": "Ubuntu", "kernel": "6.1", "llama_cpp_commit": "b1",
               "meter_id": "m2", "meter_firmware": "1.3", "cooling": "passive"}
    ids = {hardware.hardware_id(dataclasses.replace(PROFILE, **{k: v})) for k, v in changed.items()}
    assert len(ids) == len(changed) and hw not in ids


class FakeExecutor:
    """Answers the probe script as a Pi 5 would; counts calls."""

    name = "pi0"

    def __init__(self):
        self.calls = 0

    def run(self, command, *, timeout=None, on_line=None, check=False):
        self.calls += 1
        assert "uname -r" in command and "MemTotal" in command
        text = ("kernel:6.6.51+rpt-rpi-2712\nos:Debian GNU/Linux 12 (bookworm)\n"
                "model:Raspberry Pi 5 Model B Rev 1.0\nmem_kb:8245000\n")
        return Result(0, [(1, line + "\n") for line in text.splitlines()])


def test_complete_probes_what_the_config_omits_and_stated_values_win():
    ex = FakeExecutor()
    got = hardware.complete(hardware.HardwareProfile(ram_mb=8192, cooling="active cooler"), ex,
                            llama_cpp_commit="b4153", meter="simulated")
    assert ex.calls == 1
    assert got == dataclasses.replace(PROFILE, meter_id="simulated", meter_firmware="simulated")  # ram_mb stated
    full = hardware.complete(PROFILE, ex, llama_cpp_commit="other", meter="simulated")
    assert full == PROFILE and ex.calls == 1  # nothing to probe; the config's commit and meter win
    bare = hardware.complete(None, ex, meter="epi-meter:/dev/ttyUSB0")
    assert (bare.llama_cpp_commit, bare.meter_id, bare.meter_firmware, bare.cooling, bare.ram_mb) == (
        "unknown", "epi-meter-0", "unknown", "unknown", 8051)
    assert "Raspberry Pi 5" in bare.describe() and bare.hardware_id in bare.describe()


def test_probe_on_this_machine_and_an_empty_probe():
    local = hardware.local_profile(llama_cpp_commit="abc", meter="none")
    assert local.kernel not in (None, "") and local.meter_id == "none" and local.llama_cpp_commit == "abc"
    assert hardware.parse_probe("") == hardware.HardwareProfile()
    assert hardware.parse_probe("kernel:\x1b[31mx\nmem_kb:abc\n") == hardware.HardwareProfile(kernel="[31mx")


def test_run_events_carry_hardware_id_and_old_runs_read_null(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.init()
    row = {"model": "m", "config_id": "c", "status": "started", "repeat": 0, "file_sha256": None,
           "power_source": "simulated", "host": "h", "provenance_json": "{}", "message": None}
    lake.record("run", [{**row, "run_id": "old"}])  # a writer of run schema 1: no hardware_id
    lake.record("run", [{**row, "run_id": "new", "hardware_id": PROFILE.hardware_id}])
    runs = lake.read("run").sort("run_id")
    assert runs.select("run_id", "hardware_id").rows() == [("new", PROFILE.hardware_id), ("old", None)]
    assert lake.verify().ok
    with pytest.raises(Exception, match="hardware_id"):
        lake.record("run", [{**row, "run_id": "bad", "hardware_id": "not-an-id"}])
    assert pl.Series(runs["schema_version"]).max() == 2


class RunV1(RunBound):
    """The run model of schema version 1 (no hardware_id)."""

    status: pl.Utf8 = pa.Field(isin=list(ev.RUN_STATUSES))
    repeat: pl.Int32 = pa.Field(ge=0)
    file_sha256: pl.Utf8 = pa.Field(nullable=True, str_matches=ev.SHA256)
    power_source: pl.Utf8 = pa.Field(isin=list(ev.RUN_POWER_SOURCES))
    host: pl.Utf8 = pa.Field(str_matches=ev.NAME)
    provenance_json: pl.Utf8 = pa.Field()
    message: pl.Utf8 = pa.Field(nullable=True)


def test_version_1_run_model_is_the_current_one_without_hardware_id():
    spec = EVENT_TYPES["run"]
    assert spec.version == 2 and spec.added == ("hardware_id",)
    assert list(RunV1.to_schema().columns) == [c for c in spec.schema.columns if c != "hardware_id"]


def test_a_lake_of_run_schema_1_reads_hardware_unknown_in_the_views(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        m.setitem(EVENT_TYPES, "run", EventSpec("run", RunV1, RUN_KEYS, version=1))
        old = Lake(tmp_path / "lake")
        old.init()
        old.record("run", {**rows_for("run", 1, run_id="old-run"), "status": ["finished"]})
    lake = Lake(tmp_path / "lake")
    runs = lake.read("run")
    assert runs["schema_version"].to_list() == [1] and runs["hardware_id"].to_list() == [None]
    assert lake.verify().ok
    lake.record("run", {**rows_for("run", 1, run_id="new-run"), "status": ["finished"],
                        "hardware_id": [PROFILE.hardware_id]})
    con = sql.connect(lake)
    got = con.sql("SELECT run_id, hardware_id FROM run_metrics ORDER BY run_id").fetchall()
    assert got == [("new-run", PROFILE.hardware_id), ("old-run", "unknown")]
    assert con.sql("SELECT count(*) FROM run WHERE hardware_id IS NULL").fetchall() == [(1,)]
    assert lake.verify().ok, lake.verify().problems
