"""The ``search`` flow: the energy-aware per-layer search as stages (probe -> fit and optimise
-> verify), thin wiring over :mod:`mqepi.search`. Every stage is resumable: the probes are
cached in the lake by tensor types, the fit reads the lake, and the verification is a sweep
(which resumes like any sweep)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mqepi import (
    Lake,
    ProbeSettings,
    SearchSettings,
    SweepSpec,
    paper_baselines,
    run_probes,
    run_search,
    run_sweep,
    sweep_name,
    verdict,
    write_maps,
)


@task(name="probe", cache_policy=NO_CACHE, persist_result=False)
def probe(lake: str | None, settings: dict) -> dict:
    done = run_probes(Lake(lake), ProbeSettings(**settings), progress=get_run_logger().info)
    return {"reference_kld": done.reference.kld_mean, "probes": len(done.results),
            "measured_now": sum(r.measured_now for r in done.results.values())}


@task(name="fit and optimise", cache_policy=NO_CACHE, persist_result=False)
def fit_and_optimise(lake: str | None, settings: dict, budget_kld: float | None, verify: int) -> dict:
    result = run_search(Lake(lake), SearchSettings(ProbeSettings(**settings), budget_kld=budget_kld, verify=verify),
                    progress=get_run_logger().info)
    paths = write_maps(result)
    return result.summary() | {"maps": [str(p) for p in paths]}


@task(name="verify", cache_policy=NO_CACHE, persist_result=False)
def verify(lake: str | None, spec: dict, config_ids: list[str], budget_kld: float) -> dict:
    """The written maps and the paper configurations of KLD within the budget, in one sweep."""
    measured = config_ids + [b for b in paper_baselines(Lake(lake), spec["model"], budget_kld) if b not in config_ids]
    run_sweep(SweepSpec(**{**spec, "configs": measured, "name": sweep_name(measured)}), Lake(lake),
              progress=get_run_logger().info)
    return verdict(Lake(lake), config_ids, sweep_name(measured))


@flow(name="search")
def search_flow(lake: str | None = None, probe_settings: dict | None = None, budget_kld: float | None = None,
                verify_maps: int = 3, sweep: dict | None = None) -> dict:
    """Probe (``probe_settings``: :class:`mqepi.search.probes.ProbeSettings` fields), fit the
    models, optimise within ``budget_kld`` (default: the reference's KLD), write the best
    ``verify_maps`` maps and the baselines, and, given ``sweep`` (:class:`mqepi.SweepSpec`
    fields, e.g. the cluster config and meter), measure them by a sweep."""
    settings = probe_settings or {}
    probed = probe(lake, settings)
    found = fit_and_optimise(lake, settings, budget_kld, verify_maps)
    result = {"probes": probed, "search": found}
    if sweep is not None:
        result["verification"] = verify(lake, {"model": settings.get("model", "smollm2-135m"), **sweep},
                                        [w["config_id"] for w in found["written"]], found["budget_kld"])
    return result
