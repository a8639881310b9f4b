"""The report's words and constants: power-source labels, the banner, number formatting.

Everything here is plain Python over plain values, so every module of the report (the
figures included) can use it without importing the report's data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from mqepi.errors import MqepiError


class ReportError(MqepiError):
    """The report cannot be built (a view is missing, a bad option)."""


#: Values of ``--origin``: lab only, every community origin, or both (shown separately).
ORIGINS = ("lab", "community", "all")
#: Layer groups of RQ3, positional as :func:`mqepi.quant.maps.group_bounds` defines them.
LAYER_GROUPS = ("early", "middle", "late")
#: Significance level of every interval and test in the report.
ALPHA = 0.05
#: The paper's reference configuration for RQ4.
REFERENCE_CONFIG = "uniform_q4km"

#: Power sources that are measurements (see schemas/events.py).
MEASURED_SOURCES = ("epi-meter", "atm90e26", "nvml")
#: Power-source values that mean no power was measured.
NO_POWER = (None, "none", "")
SIMULATED = "simulated power (not measured)"
CANNOT = "the data cannot support a conclusion"

_POWER_LABELS = {
    "simulated": SIMULATED,
    "epi-meter": "measured power (epi-meter)",
    "atm90e26": "measured power (ATM90E26 meter)",
    "nvml": "measured power (NVML)",
    "replay": "replayed power trace (not a live measurement)",
}


def power_label(source: str | None) -> str:
    """How the report names a power source: never lets simulated power pass as measured."""
    if source in _POWER_LABELS:
        return _POWER_LABELS[source]
    if source in NO_POWER:
        return "no power measured"
    return f"power source {source!r} (not a known measurement)"


def power_banner(power_sources: Iterable[str | None]) -> tuple[str, str]:
    """(severity, text) of the report's banner over the power sources of its groups and runs
    (:meth:`ReportData.power_sources`): severity 'simulated', 'measured' or 'none'."""
    sources = [s for s in power_sources if s]
    measured = [s for s in sources if s in MEASURED_SOURCES]
    other = [s for s in sources if s not in MEASURED_SOURCES and s != "none"]
    if "simulated" in sources:
        text = ("SIMULATED POWER (NOT MEASURED): energy numbers (J/token, EPI, W) of every group marked "
                f"'{SIMULATED}' come from a simulated meter, not from a measurement; do not cite them as measured.")
        if measured:
            text += f" Other groups: {', '.join(power_label(s) for s in measured)}."
        return "simulated", text
    if other:
        return "simulated", ("NOT MEASURED LIVE: power comes from " + ", ".join(power_label(s) for s in other)
                             + (f"; measured groups: {', '.join(power_label(s) for s in measured)}" if measured else "") + ".")
    if measured:
        return "measured", "Power source: " + ", ".join(power_label(s) for s in measured) + "."
    return "none", "NO POWER MEASURED: no run of this report has power data, so there are no energy numbers."


def check_origin(origin: str, *, option: str = "origin") -> str:
    """``origin`` when it is one of :data:`ORIGINS`, else a :class:`ReportError` naming ``option``."""
    if origin not in ORIGINS:
        raise ReportError(f"{option} {origin!r} is not one of {', '.join(ORIGINS)}")
    return origin


def lab_first(origin: str | None, *rest: str | None) -> tuple:
    """Sort key of a group (origin, then model, power source, ...): the lab first, then by name."""
    return (origin != "lab", origin or "", *(x or "" for x in rest))


def group_title(origin: str, model: str, power_source: str) -> str:
    return f"{model}, origin {origin}, {power_label(power_source)}"


# ------------------------------------------------------------------ formatting


def fmt(x: float | int | None, digits: int = 4) -> str:
    """A number in ``digits`` significant digits; '-' for missing."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,d}"
    return f"{x:.{digits}g}"


def fmt_ci(x, lo, hi, digits: int = 4) -> str:
    """``x (lo-hi)``, compact (``x (lo to hi)`` when a bound is negative, so no minus sign reads as
    a dash), all three to the decimal place the interval supports (:func:`ci_decimals`); ``x``
    alone in ``digits`` significant digits without an interval; '-' for missing."""
    if x is None:
        return "-"
    if lo is None or hi is None:
        return fmt(x, digits)
    if hi == math.inf:  # an EPI interval reaching resamples without a right answer
        return f"{fmt(x, digits)} ({fmt(lo, digits)} to inf)"
    d = ci_decimals(lo, hi)
    show = (lambda v: fmt(v, digits)) if d is None else (lambda v: _fixed(v, d))
    sep = " to " if lo < 0 or hi < 0 else "-"
    return f"{show(x)} ({show(lo)}{sep}{show(hi)})"


def fmt_pm(x, stderr, digits: int = 4) -> str:
    """``x ± stderr`` to the decimal place the standard error supports (:func:`ci_decimals` of
    x ± stderr); ``x`` alone without one; '-' for missing."""
    if x is None:
        return "-"
    d = None if stderr is None else ci_decimals(x - stderr, x + stderr)
    if d is None:
        return fmt(x, digits) + ("" if stderr is None else f" ± {fmt(stderr, 2)}")
    return f"{_fixed(x, d)} ± {_fixed(stderr, d)}"


def ci_decimals(lo: float, hi: float) -> int | None:
    """Decimal places an interval supports: its half-width to two significant digits when they
    read below 35, else to one (the Particle Data Group's rounding rule), so a value is never
    printed finer than its uncertainty. Negative: round to tens, hundreds ...; None when the
    interval is empty or not finite (then significant digits are used)."""
    half = (hi - lo) / 2
    if not (math.isfinite(half) and half > 0):
        return None
    exponent = math.floor(math.log10(half))
    leading = int(half / 10 ** (exponent - 1))  # the half-width's first two digits, 10..99
    d = (1 if leading < 35 else 0) - exponent
    return d if d <= 12 else None


def _fixed(v: float, decimals: int) -> str:
    if decimals >= 0:
        text = f"{v:.{decimals}f}"
    else:
        text = f"{round(v, decimals):,.0f}"
    return "0" + text[2:] if text.startswith("-0") and not any(c in "123456789" for c in text) else text


def gb(n: int | float | None) -> float | None:
    """Bytes in GB (10^9)."""
    return None if n is None else n / 1e9


def slug(*parts: str) -> str:
    """A file-name stem from ``parts`` (anything but letters, digits, ``._-`` becomes ``-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(p for p in parts if p)).strip("-") or "x"


#: A value that is a path of the machine that wrote it (POSIX, home-relative or Windows).
_LOCAL_PATH = re.compile(r"^(?:/|~/|[A-Za-z]:[\\/])")


def without_local_path(value: str) -> str:
    """``value``, unless it is an absolute path of some machine: then its last component and
    "(local path)" (the report names data by hash or relative to the lake, never by where a
    machine keeps it)."""
    if not isinstance(value, str) or not _LOCAL_PATH.match(value.strip()):
        return value
    name = re.split(r"[\\/]", value.strip().rstrip("/\\"))[-1] or "/"
    return f"{name} (local path)"


def lake_label(uri: str) -> str:
    """The lake as the report names it: an object-store URI as is, a local folder by its name."""
    if "://" in uri and not uri.startswith("file://"):
        return uri
    return f"'{without_local_path(uri.removeprefix('file://')).removesuffix(' (local path)')}' (a local folder)"

