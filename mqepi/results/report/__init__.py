"""The report: RQ1-RQ5 of the paper answered from the lake's analysis views.

One module per concern, from the bottom up:

* :mod:`~mqepi.results.report.labels`: constants, power-source wording, number formatting;
* :mod:`~mqepi.results.report.data`: :class:`ReportData`, the frames the report reads, and the
  bits/weight of each layer group;
* :mod:`~mqepi.results.report.query`: :func:`collect`, the report's queries over the lake;
* :mod:`~mqepi.results.report.statistics`: OLS with influence diagnostics (statsmodels, :class:`Fit`),
  Pearson's r;
* :mod:`~mqepi.results.report.questions`: the questions and one :class:`Answer`;
* :mod:`~mqepi.results.report.comparisons`: RQ1 (matched pairs), RQ2 (frontier), RQ4 (optimum);
* :mod:`~mqepi.results.report.regressions`: RQ3 (layer sensitivity), RQ5 (energy attribution);
* :mod:`~mqepi.results.report.answers`: every answer (:func:`analyse`) and :func:`summary`;
* :mod:`~mqepi.results.report.document`: a Markdown / self-contained HTML document;
* :mod:`~mqepi.results.report.plots`: the figures (matplotlib, loaded on the first figure);
* :mod:`~mqepi.results.report.tables`: the rows of the report's tables;
* :mod:`~mqepi.results.report.write`: :func:`write_report` and :func:`build_report`, the one
  pipeline of ``mqepi report`` and the demo.

Lab and community data are never pooled: every answer is about one (origin, model, power
source) group. Every answer names its evidence and its power source; simulated power is
called "simulated power (not measured)" everywhere.
"""
