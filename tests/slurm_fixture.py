"""A throwaway Slurm cluster on this machine, for tests: munged, slurmctld and two slurmd (nodes n1, n2, one
host — Debian's Slurm is built with MULTIPLE_SLURMD), every file under one temp dir, every port chosen free at
start. Needs root and Debian's ``slurmctld slurmd slurm-client munge`` (``.ci/run`` installs them); without
them :func:`missing` says what is absent and the tests skip.

Every process of this cluster carries ``MARKER=<its temp dir>`` in its environment: the daemons get it from
here, the jobs from the ``sbatch`` that submitted them (``--export=ALL``, Slurm's default), and everything a job
starts inherits it. That is how a test finds what this cluster left behind without touching any other Slurm,
Ray or user process on the machine; teardown stops the daemons by the PIDs it started them with.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.study.test_study_address import free_port

MARKER = "DRL_TUNE_SLURM_TEST"
TOOLS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
PROC = Path("/proc")
# a job's states once it has ended and Slurm has ended every process of it (while they are being ended, scontrol
# shows COMPLETING instead)
ENDED = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                   "BOOT_FAIL", "DEADLINE"})


def missing() -> str | None:
    """Why this machine cannot run the cluster (None when it can)."""
    absent = [t for t in TOOLS if shutil.which(t) is None]
    if absent:
        return (f"Slurm test cluster: {', '.join(absent)} not found; install Debian's slurmctld slurmd "
                "slurm-client munge (.ci/run does)")
    if os.geteuid() != 0:
        return "Slurm test cluster: slurmd must run as root here (SlurmdUser=root)"
    return None


def process_env(pid: int) -> dict[str, str]:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]


def _zombie(pid: int) -> bool:
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


class SlurmCluster:
    """``start()``, then ``sbatch``/``squeue``/``scancel`` through :meth:`run` (``SLURM_CONF`` points here)."""

    def __init__(self, base: Path, nodes: tuple[str, ...] = ("n1", "n2"), cpus: int = 1, memory_mb: int = 4000):
        self.base = base
        os.chmod(base, 0o755)  # munged refuses a socket whose parent folders are not o+x (mktemp makes 700)
        self.nodes = nodes
        self.conf = base / "slurm.conf"
        self.socket = base / "munge" / "munge.socket"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), MARKER: str(base)}
        for key in [k for k in self.env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
            self.env.pop(key)  # a test run inside a Slurm job must not hand that job's settings on
        self.procs: dict[str, subprocess.Popen] = {}
        self.ctld_port = free_port()
        self.node_ports = {n: free_port() for n in nodes}
        self.cpus, self.memory_mb = cpus, memory_mb

    # --- bring-up / teardown -----------------------------------------------------------------------------

    def write_conf(self) -> None:
        for sub in ("state", "spool", "log", "munge"):
            (self.base / sub).mkdir(exist_ok=True)
        b = self.base
        lines = [
            "ClusterName=drltest", "SlurmctldHost=localhost", f"SlurmctldPort={self.ctld_port}",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={self.socket}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
            "MailProg=/bin/true", "ReturnToService=2",
            "MinJobAge=300",  # a job's final state (scontrol show job) stays readable for the tests after its end
            # after scancel: SIGTERM, then SIGKILL KillWait s later; Slurm's default, 30 s: the script's clean-up
            # (the study's stop, then Ray's on both nodes) ran past 10 s while the other test process (-n 2) worked
            "KillWait=30",
            f"StateSaveLocation={b}/state", f"SlurmdSpoolDir={b}/spool/%n",
            f"SlurmctldPidFile={b}/slurmctld.pid", f"SlurmdPidFile={b}/slurmd-%n.pid",
            f"SlurmctldLogFile={b}/log/slurmctld.log", f"SlurmdLogFile={b}/log/slurmd-%n.log",
        ]
        # each node its own loopback address (n1 127.0.0.1, n2 127.0.0.2, ...), as separate machines have: the
        # sbatch script gives each Ray node its Slurm NodeAddr, so a trial's node_ip names the node it ran on
        for i, (node, port) in enumerate(self.node_ports.items()):
            lines.append(f"NodeName={node} NodeHostname=localhost NodeAddr=127.0.0.{i + 1} Port={port} "
                         f"CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN")
        lines.append(f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def _daemon(self, name: str, args: list[str]) -> None:
        log = open(self.base / "log" / f"{name}.out", "w")  # noqa: SIM115 - open for the daemon's life
        self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        log.close()

    def start(self, timeout: float = 60) -> None:
        self.write_conf()
        munge = self.base / "munge"
        os.chmod(munge, 0o755)
        subprocess.run(["mungekey", "--create", f"--keyfile={munge / 'munge.key'}"], check=True,
                       capture_output=True)
        self._daemon("munged", ["munged", "--foreground", f"--key-file={munge / 'munge.key'}",
                                f"--socket={self.socket}", f"--pid-file={munge / 'munged.pid'}",
                                f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"])
        self._wait(lambda: self.socket.exists(), timeout, "munged")
        self._daemon("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait(lambda: self.run("sinfo", "-h").returncode == 0, timeout, "slurmctld")
        for node in self.nodes:
            self._daemon(f"slurmd-{node}", ["slurmd", "-D", "-f", str(self.conf), "-N", node])
        self._wait(lambda: self.idle_nodes() == len(self.nodes), timeout, "slurmd nodes idle")

    def idle_nodes(self) -> int:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t").stdout.split("\n")
        return sum(1 for line in out if line.split()[1:2] == ["idle"])

    def _wait(self, check, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"Slurm test cluster: {dead[0]} exited ({self.procs[dead[0]].returncode})\n"
                                   + self.logs())
            if check():
                return
            time.sleep(0.2)
        raise TimeoutError(f"Slurm test cluster: {what} not ready after {timeout:g} s\n" + self.logs())

    def logs(self, tail: int = 2000) -> str:
        parts = []
        for path in sorted((self.base / "log").glob("*")) + [self.base / "munge" / "munged.log"]:
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text()[-tail:]}")
        return "\n".join(parts)

    def stop(self) -> list[str]:
        """Cancel this cluster's jobs, stop its daemons by their PIDs, then kill anything still carrying this
        cluster's marker; returns what had to be killed that way (empty: the jobs cleaned up after themselves)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--user", "root")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.run("squeue", "-h").stdout.strip():
                time.sleep(0.5)
        for name in sorted(self.procs, key=lambda n: n == "munged"):  # munged last: the others need it to stop
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        left = self.leftovers()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return [f"{pid} {cmdline(pid)[:120]}" for pid in left]

    # --- use -------------------------------------------------------------------------------------------

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), capture_output=True, text=True, env=self.env, timeout=timeout)

    def sbatch(self, *args: str, env: dict[str, str] | None = None) -> int:
        """Submit; returns the job id."""
        out = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True,
                             env={**self.env, **(env or {})}, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed ({out.returncode}): {out.stderr}")
        return int(out.stdout.strip().split(";")[0])

    def job_state(self, job: int) -> str | None:
        """PENDING, RUNNING, COMPLETING (its processes are being ended), then a state of :data:`ENDED`; None
        once slurmctld has forgotten the job (MinJobAge, 300 s, after its end). Asks again while slurmctld does not
        answer: a missing answer is not taken for a job that is gone."""
        deadline = time.monotonic() + 60
        while (info := self.job_info(job)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"slurmctld did not answer `scontrol show job {job}` for 60 s\n" + self.logs())
            time.sleep(0.5)
        return info.get("JobState") if info else None

    def job_info(self, job: int) -> dict[str, str] | None:
        """``scontrol show job`` as a dict; {} once slurmctld has forgotten the job, None if it did not answer.
        (squeue is not asked: it may leave out a job that is still COMPLETING.)"""
        out = self.run("scontrol", "show", "job", "-o", str(job))
        if out.returncode != 0:
            return {} if "Invalid job id" in out.stderr else None
        return dict(re.findall(r"(\w+)=(\S*)", out.stdout))

    def wait_ended(self, job: int, timeout: float) -> dict[str, str]:
        """Wait until ``job`` has ended and Slurm has ended every process of it (a state of :data:`ENDED`, or
        forgotten); returns the last ``scontrol show job`` answer seen ({} if there was none)."""
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        while True:
            info = self.job_info(job)  # None (no answer): ask again
            if info:
                last = info
            if info == {} or last.get("JobState") in ENDED:
                return last
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job} still {last.get('JobState', '?')} after {timeout:g} s")
            time.sleep(0.5)

    def leftovers(self, job: int | None = None) -> list[int]:
        """PIDs of live processes this cluster started (its marker in their environment), other than its own
        daemons; with ``job``, only that job's (its SLURM_JOB_ID, or a slurmstepd of it)."""
        own = {p.pid for p in self.procs.values()}
        found = []
        for pid in _pids():
            if pid in own or pid == os.getpid() or _zombie(pid):
                continue
            env = process_env(pid)
            line = cmdline(pid)
            ours = env.get(MARKER) == str(self.base) or (
                line.startswith("slurmstepd") and env.get("SLURM_CONF") == str(self.conf))
            if not ours:
                continue
            if job is None or env.get("SLURM_JOB_ID") == str(job) or re.search(rf"\[{job}\.", line):
                found.append(pid)
        return found
