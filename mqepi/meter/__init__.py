"""Power metering: one stream interface, one module per power source, clock alignment and
energy per measurement window.

Modules (each importable on its own, none needs Prefect):

``stream``     run key, exceptions, arrival stamps, each power source's resolution and
               accuracy, the serial port, the stream plumbing every source shares (thread,
               batching, writer thread, incidents, polling) and the lake sink
``protocol``   the epi-meter line format (constants, encoder, pluggable decoders)
``epimeter``   the epi-meter reader (pyserial): stamps, resynchronisation, reconnects,
               batched appends
``atm90e26``   the ATM90E26 chip read directly: UART frames, registers and scaling, the
               source, an emulated chip on a pty
``simulated``  a simulated epi-meter on a pty with a Pi 5-like power model and fault injection
``nvml``       NVIDIA GPU board power through NVML
``replay``     replay of a recorded trace (CSV or Parquet)
``clock``      meter-clock to host-clock fit (offset + drift) and its residual
``windows``    named measurement windows, trapezoidal energy, gates, J/token
``session``    a short recorded run on the simulated meter (``mqepi meter demo``)

Every number a simulated meter produces carries ``power_source = "simulated"``.
"""

from mqepi.meter.stream import MeterError, ProtocolError, RunKey, SourceUnavailable

__all__ = ["MeterError", "ProtocolError", "RunKey", "SourceUnavailable"]
