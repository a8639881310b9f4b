"""The ATM90E26 metering chip read directly: its UART register protocol, the source that
polls one chip, and an emulated chip on a pty.

**Frames**: host read request ``FE, 0x80|addr, checksum``, chip answer ``MSB, LSB,
checksum``; host write request ``FE, addr, MSB, LSB, checksum``, chip answer ``checksum``.
A checksum is the low byte of the sum of the frame's bytes after ``FE`` (for an answer: of
MSB and LSB). The chip talks at 2400 or 9600 baud. Register map and scaling:
:class:`Register`, ``*_from_raw`` / ``*_to_raw``.

:class:`Atm90e26Source` polls one chip into power samples; :class:`Atm90e26Emulator`
answers the same protocol on a pty (tests and demos of the direct-chip source).
"""

from __future__ import annotations

import os
import pty
import select
import threading
import time
import tty
from enum import IntEnum

import polars as pl

from mqepi.meter.stream import MeterError, PolledStream, ProtocolError, open_port, port_or_url, sample_row

# --------------------------------------------------------------------------- registers and frames


class Register(IntEnum):
    """ATM90E26 registers (16 bit each; datasheet register map)."""

    SOFT_RESET = 0x00  # write 0x789A to reset
    SYS_STATUS = 0x01  # bit 14: CS1 error, bit 12: CS2 error
    FUNC_EN = 0x02
    SAG_TH = 0x03
    SMALL_P_MOD = 0x04
    LAST_DATA = 0x06  # last value read or written
    LSB = 0x08  # low 16 bits of the last RMS/power value read
    CAL_START = 0x20  # metering calibration start (0x5678) / check (0x8765)
    PL_CONST_H = 0x21
    PL_CONST_L = 0x22
    L_GAIN = 0x23
    L_PHI = 0x24
    N_GAIN = 0x25
    N_PHI = 0x26
    P_START_TH = 0x27
    P_NOL_TH = 0x28
    Q_START_TH = 0x29
    Q_NOL_TH = 0x2A
    M_MODE = 0x2B
    CS1 = 0x2C  # checksum of 0x21-0x2B
    ADJ_START = 0x30  # measurement calibration start / check
    U_GAIN = 0x31
    I_GAIN_L = 0x32
    I_GAIN_N = 0x33
    U_OFFSET = 0x34
    I_OFFSET_L = 0x35
    I_OFFSET_N = 0x36
    P_OFFSET_L = 0x37
    Q_OFFSET_L = 0x38
    P_OFFSET_N = 0x39
    Q_OFFSET_N = 0x3A
    CS2 = 0x3B  # checksum of 0x31-0x3A
    AP_ENERGY = 0x40  # forward active energy, cleared on read, 0.1 pulse per LSB
    AN_ENERGY = 0x41  # reverse active energy, cleared on read
    AT_ENERGY = 0x42  # absolute active energy
    RP_ENERGY = 0x43
    RN_ENERGY = 0x44
    RT_ENERGY = 0x45
    EN_STATUS = 0x46
    IRMS = 0x48  # L line current (scaled by SCALE)
    URMS = 0x49  # voltage (SCALE)
    PMEAN = 0x4A  # L line mean active power, two's complement, 1 W per LSB (LSB register: low bits)
    QMEAN = 0x4B
    FREQ = 0x4C  # line frequency (SCALE)
    POWER_F = 0x4D  # L line power factor, sign-magnitude (SCALE)
    P_ANGLE = 0x4E
    SMEAN = 0x4F
    IRMS2 = 0x68  # N line current
    PMEAN2 = 0x6A
    QMEAN2 = 0x6B
    POWER_F2 = 0x6D
    P_ANGLE2 = 0x6E
    SMEAN2 = 0x6F


ATM_START = 0xFE
ATM_READ = 0x80  # bit 7 of the address byte: 1 = read, 0 = write
ATM_BAUDRATES = (2400, 9600)
#: The chip's default meter constant (pulses per kWh) and energy per pulse.
DEFAULT_IMP_PER_KWH = 1000
#: APenergy counts tenths of a pulse.
ENERGY_PULSE_FRACTION = 0.1
J_PER_KWH = 3.6e6
#: Value of one LSB of the unsigned (and sign-magnitude) measurement registers.
SCALE = {
    Register.URMS: 0.01,  # V
    Register.IRMS: 0.001,  # A
    Register.FREQ: 0.01,  # Hz
    Register.POWER_F: 0.001,  # power factor magnitude; bit 15 is the sign
}


def _checksum(*values: int) -> int:
    return sum(values) & 0xFF


def _check_register(address: int) -> int:
    address = int(address)
    if not 0 <= address <= 0x7F:
        raise ProtocolError(f"ATM90E26 register address 0x{address:X} is outside 0x00-0x7F")
    return address


def _check_u16(value: int, what: str = "value") -> int:
    value = int(value)
    if not 0 <= value <= 0xFFFF:
        raise ProtocolError(f"ATM90E26 {what} {value} does not fit 16 bits")
    return value


def encode_read_request(address: int) -> bytes:
    """Host -> chip: read ``address`` (3 bytes)."""
    byte = _check_register(address) | ATM_READ
    return bytes((ATM_START, byte, _checksum(byte)))


def encode_write_request(address: int, value: int) -> bytes:
    """Host -> chip: write ``value`` to ``address`` (5 bytes)."""
    address = _check_register(address)
    value = _check_u16(value)
    msb, lsb = value >> 8, value & 0xFF
    return bytes((ATM_START, address, msb, lsb, _checksum(address, msb, lsb)))


def decode_request(frame: bytes) -> tuple[int, bool, int | None]:
    """Chip side: parse a request -> ``(address, is_read, value or None)``."""
    if len(frame) < 3 or frame[0] != ATM_START:
        raise ProtocolError(f"ATM90E26 request {frame.hex()} does not start with FE")
    if frame[1] & ATM_READ:
        if len(frame) != 3 or frame[2] != _checksum(frame[1]):
            raise ProtocolError(f"ATM90E26 read request {frame.hex()}: bad length or checksum")
        return frame[1] & 0x7F, True, None
    if len(frame) != 5 or frame[4] != _checksum(frame[1], frame[2], frame[3]):
        raise ProtocolError(f"ATM90E26 write request {frame.hex()}: bad length or checksum")
    return frame[1], False, (frame[2] << 8) | frame[3]


def encode_read_response(value: int) -> bytes:
    """Chip -> host: the answer to a read (MSB, LSB, checksum)."""
    value = _check_u16(value)
    msb, lsb = value >> 8, value & 0xFF
    return bytes((msb, lsb, _checksum(msb, lsb)))


def decode_read_response(frame: bytes, address: int | None = None) -> int:
    """Host side: the 16-bit value of a read answer; checks length and checksum."""
    where = f" to register 0x{address:02X}" if address is not None else ""
    if len(frame) != 3:
        raise ProtocolError(f"ATM90E26 answer{where} has {len(frame)} bytes ({frame.hex() or 'none'}), expected 3")
    if frame[2] != _checksum(frame[0], frame[1]):
        raise ProtocolError(f"ATM90E26 answer{where} {frame.hex()}: checksum 0x{frame[2]:02X} != "
                            f"0x{_checksum(frame[0], frame[1]):02X}")
    return (frame[0] << 8) | frame[1]


def write_ack(request: bytes) -> bytes:
    """Chip -> host: the one-byte answer to a write (the request's checksum)."""
    return request[-1:]


def calibration_checksum(values) -> int:
    """CS1 / CS2 over a calibration register block: high byte = XOR of all bytes, low
    byte = sum of all bytes mod 256."""
    total = xor = 0
    for value in values:
        value = _check_u16(value, "register value")
        for byte in (value >> 8, value & 0xFF):
            total = (total + byte) & 0xFF
            xor ^= byte
    return (xor << 8) | total


def urms_from_raw(raw: int) -> float:
    return _check_u16(raw) * SCALE[Register.URMS]


def irms_from_raw(raw: int) -> float:
    return _check_u16(raw) * SCALE[Register.IRMS]


def freq_from_raw(raw: int) -> float:
    return _check_u16(raw) * SCALE[Register.FREQ]


def pmean_from_raw(raw: int, lsb: int | None = None) -> float:
    """Active power in W: Pmean is two's complement at 1 W per LSB; the LSB register (0x08),
    read right after, holds the next 16 bits of resolution."""
    raw = _check_u16(raw)
    watts = raw - 0x10000 if raw & 0x8000 else raw
    return float(watts) if lsb is None else watts + _check_u16(lsb, "LSB register") / 65536.0


def power_factor_from_raw(raw: int) -> float:
    """Power factor: sign-magnitude, bit 15 the sign, the rest scaled by :data:`SCALE`."""
    raw = _check_u16(raw)
    magnitude = (raw & 0x7FFF) * SCALE[Register.POWER_F]
    return -magnitude if raw & 0x8000 else magnitude


def energy_from_raw(raw: int, imp_per_kwh: int = DEFAULT_IMP_PER_KWH) -> float:
    """Energy in J of an energy register reading (tenths of a pulse; 360 J per LSB at
    1000 pulses/kWh). Too coarse for per-item energy: never use it for that."""
    return _check_u16(raw) * ENERGY_PULSE_FRACTION * J_PER_KWH / imp_per_kwh


def urms_to_raw(volts: float) -> int:
    return _check_u16(round(volts / SCALE[Register.URMS]), "Urms")


def irms_to_raw(amps: float) -> int:
    return _check_u16(round(amps / SCALE[Register.IRMS]), "Irms")


def freq_to_raw(hz: float) -> int:
    return _check_u16(round(hz / SCALE[Register.FREQ]), "Freq")


def pmean_to_raw(watts: float) -> int:
    w = int(round(watts))
    if not -0x8000 <= w <= 0x7FFF:
        raise ProtocolError(f"ATM90E26 Pmean {watts} W does not fit 16 bits")
    return w & 0xFFFF


def power_factor_to_raw(pf: float) -> int:
    magnitude = round(abs(pf) / SCALE[Register.POWER_F])
    if magnitude > 0x7FFF:
        raise ProtocolError(f"ATM90E26 power factor {pf} out of range")
    return (0x8000 if pf < 0 else 0) | magnitude


# --------------------------------------------------------------------------- the source


class Atm90e26Source(PolledStream):
    """One ATM90E26 read over its own UART (2400 or 9600 baud), polled at ``rate_hz``.

    Each poll reads Urms, Irms, Pmean (+ the LSB register for the fine bits when
    ``fine_power``), Freq, PowerF and APenergy (cleared on read, so accumulated here into
    ``energy_counter_j``). A bad checksum or a missing answer loses that poll (an incident;
    its ``seq`` is skipped, so windows see the gap). Each register read costs 6 bytes on the
    wire: at 9600 baud a poll of 7 registers takes about 45 ms.
    """

    power_source = "atm90e26"

    def __init__(self, port, sink, *, channel: int = 0, node: str | None = None, meter_id: str = "atm90e26-0",
                 power_source: str = "atm90e26", rate_hz: float = 5.0, baudrate: int = 9600,
                 imp_per_kwh: int = DEFAULT_IMP_PER_KWH, fine_power: bool = True, answer_timeout_s: float = 0.2,
                 flush_interval_s: float = 1.0):
        super().__init__(sink, rate_hz=rate_hz, flush_interval_s=flush_interval_s)
        if power_source not in ("atm90e26", "simulated"):
            raise MeterError(f"power_source {power_source!r} must be atm90e26 (or simulated for an emulated chip)")
        self.url, self._port = port_or_url(port)
        self.channel, self.node, self.meter_id, self.power_source = channel, node, meter_id, power_source
        self.baudrate, self.imp_per_kwh, self.fine_power = baudrate, imp_per_kwh, fine_power
        self.answer_timeout_s = answer_timeout_s
        self.energy_j = 0.0
        self.failed_polls = 0

    def _open(self) -> None:
        if self._port is None:
            self._port = open_port(self.url, self.baudrate, self.answer_timeout_s)

    def _close(self) -> None:
        if self._port is not None and self.url is not None:
            self._port.close()
            self._port = None

    def read_register(self, address: int) -> int:
        """One register read transaction; :class:`ProtocolError` on a bad or missing answer."""
        self._port.write(encode_read_request(address))
        answer = self._port.read(3)
        return decode_read_response(answer, address)

    def _read_values(self) -> dict[str, float]:
        """One reading: every register of a poll, scaled (the energy register is summed)."""
        volts = urms_from_raw(self.read_register(Register.URMS))
        amps = irms_from_raw(self.read_register(Register.IRMS))
        pmean = self.read_register(Register.PMEAN)
        lsb = self.read_register(Register.LSB) if self.fine_power else None
        watts = pmean_from_raw(pmean, lsb)
        hz = freq_from_raw(self.read_register(Register.FREQ))
        pf = power_factor_from_raw(self.read_register(Register.POWER_F))
        self.energy_j += energy_from_raw(self.read_register(Register.AP_ENERGY), self.imp_per_kwh)
        return {"power_w": watts, "voltage_v": volts, "current_a": amps, "power_factor": pf, "frequency_hz": hz}

    def _poll(self, seq: int) -> pl.DataFrame | None:
        try:
            values = self._read_values()
        except ProtocolError as exc:
            self.failed_polls += 1
            self._incident("bad_check" if "checksum" in str(exc) else "no_answer", self.clock.stamp()[0], str(exc),
                           seq, seq)
            try:
                self._port.reset_input_buffer()
            except Exception:  # noqa: BLE001 - a port object without the method
                pass
            return None
        host, mono = self.clock.stamp()
        if values["power_w"] < 0:
            self._incident("invalid", host, f"Pmean {values['power_w']} W is negative (current transformer reversed?)",
                           seq, seq)
            return None
        return sample_row(power_source=self.power_source, meter_id=self.meter_id, channel=self.channel, node=self.node,
                          seq=seq, meter_time_ns=None, host_time_ns=host, host_monotonic_ns=mono,
                          energy_counter_j=self.energy_j, **values)


# --------------------------------------------------------------------------- an emulated chip


class Atm90e26Emulator:
    """One ATM90E26 chip answering its UART register protocol on a pty (for tests and
    demos of the direct-chip source). ``power_w()`` gives the chip's true active power."""

    def __init__(self, power_w, *, voltage_v: float = 230.0, frequency_hz: float = 50.0, power_factor: float = 0.6,
                 imp_per_kwh: int = DEFAULT_IMP_PER_KWH, corrupt_every: int = 0):
        self.power_w = power_w
        self.corrupt_every = corrupt_every  # fault: every n-th read answer gets a wrong checksum
        self.corrupted = 0
        self.voltage_v, self.frequency_hz, self.power_factor = voltage_v, frequency_hz, power_factor
        self.imp_per_kwh = imp_per_kwh
        self.registers: dict[int, int] = {}
        self.requests = 0
        self.bad_requests = 0
        self._energy_lsb = 0.0  # APenergy register steps accumulated since the last read
        self._last = None
        master, slave = pty.openpty()
        tty.setraw(slave)
        self._master, self._slave = master, slave
        self.port = os.ttyname(slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="Atm90e26Emulator", daemon=True)

    def start(self) -> Atm90e26Emulator:
        self._last = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _value(self, address: int) -> int:
        now = time.monotonic()
        watts = self.power_w()
        self._energy_lsb += watts * (now - self._last) / energy_from_raw(1, self.imp_per_kwh)
        self._last = now
        if address == Register.AP_ENERGY:  # cleared on read
            whole = int(self._energy_lsb)
            self._energy_lsb -= whole
            return min(whole, 0xFFFF)
        table = {
            Register.URMS: lambda: urms_to_raw(self.voltage_v),
            Register.IRMS: lambda: irms_to_raw(watts / (self.voltage_v * self.power_factor)),
            Register.PMEAN: lambda: pmean_to_raw(watts),
            Register.FREQ: lambda: freq_to_raw(self.frequency_hz),
            Register.POWER_F: lambda: power_factor_to_raw(self.power_factor),
        }
        if address in table:
            return table[address]()
        return self.registers.get(address, 0)

    def _run(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.05)
            if not ready:
                continue
            try:
                buffer += os.read(self._master, 256)
            except OSError:
                return
            buffer = self._answer(buffer)

    def _answer(self, buffer: bytes) -> bytes:
        """Answer every complete request in ``buffer``; returns the incomplete rest."""
        while buffer:
            start = buffer.find(bytes([ATM_START]))
            if start < 0:
                return b""
            buffer = buffer[start:]
            need = 3 if len(buffer) > 1 and buffer[1] & ATM_READ else 5  # a read request, else a write
            if len(buffer) < need:
                return buffer
            frame, buffer = buffer[:need], buffer[need:]
            self.requests += 1
            try:
                address, is_read, value = decode_request(frame)
            except MeterError:
                self.bad_requests += 1
                continue
            if is_read:
                os.write(self._master, self._read_answer(address))
            else:
                self.registers[address] = value
                os.write(self._master, write_ack(frame))
        return buffer

    def _read_answer(self, address: int) -> bytes:
        answer = encode_read_response(self._value(address))
        if self.corrupt_every and self.requests % self.corrupt_every == 0:
            answer = answer[:2] + bytes([(answer[2] + 1) & 0xFF])
            self.corrupted += 1
        return answer
