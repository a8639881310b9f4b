"""The cluster runner: config, SSH layer, loopback cluster, check / deploy / RPC workers."""
