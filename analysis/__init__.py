"""SQL views over the lake (``views.sql``) and their helpers (installed as ``mqepi.analysis``)."""

from pathlib import Path

#: The file every SQL consumer loads: ``SET VARIABLE mqepi_lake = '<path>'; .read views.sql``.
VIEWS_SQL = Path(__file__).with_name("views.sql")
