"""The rig: where a command runs and the hardware around it.

* :mod:`mqepi.rig.executor`: the one :class:`~mqepi.rig.executor.Executor` protocol and its
  local implementation;
* :mod:`mqepi.rig.ssh`: the same protocol on a node over SSH;
* :mod:`mqepi.rig.config`: the cluster config (TOML);
* :mod:`mqepi.rig.hardware`: the hardware profile and its ``hardware_id``;
* :mod:`mqepi.rig.ops`: health checks, deployment, RPC workers, retries;
* :mod:`mqepi.rig.loopback`: a loopback cluster on this machine;
* :mod:`mqepi.rig.thermal`: thermal probes and stabilisation.
"""
