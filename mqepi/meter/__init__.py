"""Power metering: the epi-meter over serial, a simulated meter, other sources, clock
alignment and energy per measurement window.

Modules (each importable on its own, none needs Prefect):

``protocol``   format constants: the epi-meter line format, the ATM90E26 UART frames and
               register scaling, per-source resolution and accuracy
``core``       run key, exceptions, arrival stamps, the stream plumbing every source
               shares (thread, batching, writer thread, incidents) and the lake sink
``reader``     pyserial reader: stamps, resynchronisation, reconnects, batched appends
``simulator``  a simulated meter on a pty with a Pi 5-like power model and fault injection
``sources``    the ATM90E26 chip read directly, replay of a recorded trace, NVML
``clock``      meter-clock to host-clock fit (offset + drift) and its residual
``windows``    named measurement windows, trapezoidal energy, gates, J/token
``session``    a short recorded run on the simulated meter (``mqepi meter demo``)

Every number a simulated meter produces carries ``power_source = "simulated"``.
"""

from mqepi.meter.stream import MeterError, ProtocolError, RunKey, SourceUnavailable

__all__ = ["MeterError", "ProtocolError", "RunKey", "SourceUnavailable"]
