"""The meter's format facts: the v1 line codec and the ATM90E26 UART frames, on known bytes."""

from __future__ import annotations

import math

import pytest

from mqepi.meter import ProtocolError
from mqepi.meter import atm90e26 as atm
from mqepi.meter import protocol as p


def test_check_value_is_crc32_of_the_payload():
    # the CRC-32 (IEEE) check value of "123456789" is CBF43926
    assert p.check_value(b"123456789") == b"CBF43926"
    line = p.encode_line(7, [4, 3])
    assert line.endswith(b"*" + p.check_value(line[: line.index(b"*")]) + b"\n")


def test_line_round_trip_all_fields():
    line = p.encode_line(12, [4, 3.5], meter_time_us=2_000_123, voltage_v=[230.12, 229.9], current_a=[0.031, 0.025],
                         power_factor=[-0.5, 0.7], frequency_hz=[50.01, 49.99], energy_j=[360, 0], channels=[2, 5],
                         simulated=True)
    assert len(line) < 200
    decoder = p.JsonLineDecoder()
    payload, kind, detail = decoder.check(line.rstrip(b"\n"))
    assert kind is None and detail is None
    frame, issues = decoder.decode([payload])
    assert issues == []
    assert frame.to_dicts() == [
        {"line": 0, "seq": 12, "meter_time_ns": 2_000_123_000, "simulated": True, "channel": 2, "power_w": 4.0,
         "voltage_v": 230.12, "current_a": 0.031, "power_factor": -0.5, "frequency_hz": 50.01, "energy_counter_j": 360.0},
        {"line": 0, "seq": 12, "meter_time_ns": 2_000_123_000, "simulated": True, "channel": 5, "power_w": 3.5,
         "voltage_v": 229.9, "current_a": 0.025, "power_factor": 0.7, "frequency_hz": 49.99, "energy_counter_j": 0.0},
    ]


def test_optional_fields_default_to_null_and_channels_to_their_index():
    payload = p.encode_line(0, [1, 2, 3])[:-10]
    frame, issues = p.JsonLineDecoder().decode([payload])
    assert not issues
    assert frame["channel"].to_list() == [0, 1, 2]
    assert frame["voltage_v"].null_count() == 3 and frame["meter_time_ns"].null_count() == 3
    assert frame["simulated"].to_list() == [False] * 3


def test_check_classifies_garbage_and_bad_check_values():
    decoder = p.JsonLineDecoder()
    good = p.encode_line(1, [4]).rstrip(b"\n")
    # bytes before the payload are skipped, the line is kept
    payload, kind, detail = decoder.check(b"\x00\xff{junk" + good)
    assert payload == good[: good.index(b"*")] and kind == "garbage" and "7 bytes" in detail
    # a payload changed after its check value was computed
    payload, kind, detail = decoder.check(good.replace(b"[4]", b"[5]"))
    assert payload is None and kind == "bad_check" and good[-8:].decode() in detail
    # not hex
    payload, kind, detail = decoder.check(good[:-8] + b"ZZZZZZZZ")
    assert payload is None and kind == "garbage" and "ZZZZZZZZ" in detail
    # no frame at all, and an over-long line
    assert decoder.check(b"hello world")[1] == "garbage"
    assert "limit" in decoder.check(b"{" + b"1" * 2000 + b"}*00000000")[2]
    # a carriage return before the newline is fine
    assert decoder.check(good + b"\r")[1] is None


@pytest.mark.parametrize("payload,expected", [
    (b'{"v":2,"seq":1,"p":[1]}', "field 'v' = 2"),
    (b'{"v":1,"p":[1]}', "field 'seq' is missing"),
    (b'{"v":1,"seq":-4,"p":[1]}', "field 'seq' = -4"),
    (b'{"v":1,"seq":1,"p":[]}', "field 'p' is missing or empty"),
    (b'{"v":1,"seq":1,"p":[1,2],"u":[230]}', "field 'u' has 1 values for 2 channels"),
    (b'{"v":1,"seq":1,"p":[1,2],"ch":[3,3]}', "field 'ch' = 3,3"),
    (b'{"v":1,"seq":1,"p":[1],"ch":[64]}', "field 'ch' = 64"),
    (b'{"v":1,"seq":1,"p":[-2.5]}', "channel 0 power_w = -2.5"),
    (b'{"v":1,"seq":1,"p":[1],"pf":[1.5]}', "channel 0 power_factor = 1.5"),
    (b'{"v":1,"seq":1,"p":[null]}', "channel 0 power_w is null"),
    (b'{"v":1,"seq":"x","p":[1]}', "cannot parse 'x'"),
    (b'{"v":1,"seq":1,"p":[NaN]}', "not a v1 reading"),
])
def test_invalid_readings_are_reported_with_field_and_value(payload, expected):
    good = p.encode_line(9, [4])[:-10]
    frame, issues = p.JsonLineDecoder().decode([good, payload])
    assert frame["seq"].unique().to_list() == [9]  # the good line survives its bad neighbour
    assert len(issues) == 1 and issues[0].kind == "invalid" and issues[0].line == 1
    assert expected in issues[0].detail


def test_one_bad_channel_keeps_the_others():
    frame, issues = p.JsonLineDecoder().decode([b'{"v":1,"seq":1,"p":[4,-1,6]}'])
    assert frame["channel"].to_list() == [0, 2] and len(issues) == 1


def test_decoder_is_pluggable_by_field_names():
    fields = p.LineFields(seq="n", meter_time="ms", power="watts", voltage="volts")
    decoder = p.JsonLineDecoder(fields, meter_time_unit_ns=1_000_000)
    line = p.encode_line(3, [7.5], meter_time_us=250, voltage_v=[231.0], fields=fields)
    assert b'"watts":[7.5]' in line and b'"n":3' in line
    payload, kind, _ = decoder.check(line.rstrip(b"\n"))
    frame, issues = decoder.decode([payload])
    assert kind is None and not issues
    assert frame.select("seq", "meter_time_ns", "power_w", "voltage_v").row(0) == (3, 250_000_000, 7.5, 231.0)
    with pytest.raises(ProtocolError, match="unknown decoder 'nope'"):
        p.decoder_for("nope")


# --------------------------------------------------------------------------- ATM90E26


def test_atm90e26_read_request_bytes():
    assert atm.encode_read_request(atm.Register.URMS) == bytes.fromhex("FEC9C9")
    assert atm.encode_read_request(atm.Register.PMEAN) == bytes.fromhex("FECACA")
    assert atm.encode_read_request(atm.Register.AP_ENERGY) == bytes.fromhex("FEC0C0")
    assert atm.decode_request(bytes.fromhex("FEC9C9")) == (0x49, True, None)


def test_atm90e26_write_request_and_ack_bytes():
    # MMode 0x2B <- 0x9422: checksum (0x2B + 0x94 + 0x22) & 0xFF = 0xE1
    frame = atm.encode_write_request(atm.Register.M_MODE, 0x9422)
    assert frame == bytes.fromhex("FE2B9422E1")
    assert atm.decode_request(frame) == (0x2B, False, 0x9422)
    assert atm.write_ack(frame) == b"\xe1"
    with pytest.raises(ProtocolError, match="checksum"):
        atm.decode_request(bytes.fromhex("FE2B9422E2"))
    with pytest.raises(ProtocolError, match="0x80"):
        atm.encode_read_request(0x80)


def test_atm90e26_read_answer_bytes_and_checksum():
    # 230.00 V = 23000 = 0x59D8; checksum (0x59 + 0xD8) & 0xFF = 0x31
    assert atm.encode_read_response(23000) == bytes.fromhex("59D831")
    assert atm.decode_read_response(bytes.fromhex("59D831")) == 23000
    assert atm.urms_from_raw(23000) == pytest.approx(230.0)
    with pytest.raises(ProtocolError, match=r"register 0x49 59d832: checksum 0x32 != 0x31"):
        atm.decode_read_response(bytes.fromhex("59D832"), 0x49)
    with pytest.raises(ProtocolError, match="has 2 bytes"):
        atm.decode_read_response(bytes.fromhex("59D8"), 0x49)


def test_atm90e26_calibration_checksum():
    # bytes 00 15 D1 74: sum 0x15A -> 0x5A; xor 0x00^0x15^0xD1^0x74 = 0xB0
    assert atm.calibration_checksum([0x0015, 0xD174]) == 0xB05A
    assert atm.calibration_checksum([]) == 0


def test_atm90e26_register_scaling():
    assert atm.pmean_from_raw(0x0007) == 7.0
    assert atm.pmean_from_raw(0xFFFE) == -2.0  # two's complement
    assert atm.pmean_from_raw(0x0003, 0x8000) == 3.5  # the LSB register's extra resolution
    assert atm.pmean_from_raw(0xFFFE, 0x8000) == -1.5
    assert atm.power_factor_from_raw(0x8000 | 500) == -0.5  # sign-magnitude
    assert atm.power_factor_from_raw(712) == pytest.approx(0.712)
    assert atm.irms_from_raw(31) == pytest.approx(0.031)
    assert atm.freq_from_raw(5001) == pytest.approx(50.01)
    assert atm.energy_from_raw(10) == pytest.approx(3600.0)  # 360 J per LSB at 1000 pulses/kWh
    assert atm.energy_from_raw(1, imp_per_kwh=3200) == pytest.approx(112.5)
    for value in (0.0, 3.0, -7.0, 300.0):
        assert atm.pmean_from_raw(atm.pmean_to_raw(value)) == value
    for pf in (-0.999, -0.5, 0.0, 0.62):
        assert math.isclose(atm.power_factor_from_raw(atm.power_factor_to_raw(pf)), pf, abs_tol=1e-9)
    with pytest.raises(ProtocolError, match="70000"):
        atm.urms_from_raw(70000)
