"""Community submissions: bundles built from a lab's lake, checked completely, ingested
all or nothing (docs/community.md).

* :mod:`~mqepi.community.problems`: the errors, one problem, the report, the limits;
* :mod:`~mqepi.community.bundle`: reading a folder or zip bundle safely, its digest;
* :mod:`~mqepi.community.manifest`: ``manifest.json`` and submitter ids;
* :mod:`~mqepi.community.files`: each Parquet file and its values;
* :mod:`~mqepi.community.checks`: the checks across files, and against the lake;
* :mod:`~mqepi.community.validate`: every check in order (``validate_bundle``);
* :mod:`~mqepi.community.sandbox`: validation in a child process with memory and time limits;
* :mod:`~mqepi.community.ingest`: ingest, quarantine, the drop folder;
* :mod:`~mqepi.community.submit`: building a bundle (``mqepi submit``).
"""
