"""XLA_FLAGS of the simulated-device subprocesses: N CPU devices, and collective timeouts long enough
for a machine with far fewer cores than simulated devices (the device threads of one collective
may wait minutes for each other; XLA's default aborts after 40 s)."""


def xla_flags(devices: int) -> str:
    return (f"--xla_force_host_platform_device_count={devices} "
            "--xla_cpu_collective_call_terminate_timeout_seconds=1800 "
            "--xla_cpu_collective_call_warn_stuck_timeout_seconds=600 "
            "--xla_cpu_collective_timeout_seconds=1800")
