"""The Slurm launcher's settings (command line, ``$DEPTHSCAPE_SLURM_*``, a TOML file's
``[slurm]`` table) and the checks a launch makes before it submits anything."""


from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

from depthscape.core.errors import UserError
from depthscape.core.recipe_file import toml_reader
from depthscape.study import jobs

try:  # optional (depthscape[cluster]): only the slurm launcher needs it, and says so
    import submitit
except ImportError:  # pragma: no cover - checked with one line by check_launch
    submitit = None

#: Folders on a node's own disk or memory: other nodes cannot see a study written there.
NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/scratch/local")
#: Environment variables read for each setting: DEPTHSCAPE_SLURM_<NAME>.
ENV_PREFIX = "DEPTHSCAPE_SLURM_"
#: Seconds between looks at the queue while waiting (default; $DEPTHSCAPE_SLURM_POLL_S).
POLL_S = 2.0


# ---- settings -----------------------------------------------------------------------------


@dataclass
class SlurmSettings:
    """What every job asks Slurm for (a study's unit, or one command's job). ``gpus`` and
    ``mem_gb`` are per node, ``cpus`` per task; ``tasks_per_node`` None: one task per GPU
    of a node, at least one (a study's units always run one task: :func:`single_task`).
    ``args``: extra keyword arguments of submitit's ``update_parameters``
    (``--slurm-arg KEY=VALUE``)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 60
    gpus: int = 0
    cpus: int = 1
    mem_gb: float | None = None
    log_dir: str | None = None  # default <out>/slurm/logs
    args: dict = field(default_factory=dict)
    allow_node_local: bool = False
    nodes: int = 1
    tasks_per_node: int | None = None

    @property
    def tasks(self) -> int:
        """Tasks per node: as set, else one per GPU of a node (at least one)."""
        return self.tasks_per_node or max(1, self.gpus)

    def parameters(self, name: str) -> dict:
        """submitit's ``update_parameters`` for the job called ``name``."""
        params = {"name": f"ds-{name}", "timeout_min": self.time_min,
                  "cpus_per_task": self.cpus, "tasks_per_node": self.tasks, "nodes": self.nodes}
        for key, value in (("slurm_partition", self.partition), ("slurm_account", self.account),
                           ("slurm_qos", self.qos), ("mem_gb", self.mem_gb)):
            if value is not None:
                params[key] = value
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        return {**params, **self.args}


def parse_time(text) -> int:
    """Minutes from ``90``, ``1:30:00`` (h:mm:ss) or ``2-00:00:00`` (days-h:mm:ss)."""
    text = str(text).strip()
    found = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})", text)
    if found:
        days, hours, minutes, seconds = (int(g or 0) for g in found.groups())
        total = days * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    elif text.isdigit():
        total = int(text)
    else:
        raise UserError(f"a Slurm time limit is minutes or h:mm:ss, got {text!r}")
    if total < 1:
        raise UserError(f"a Slurm time limit must be at least a minute, got {text!r}")
    return total


def _value(text: str):
    """A ``--slurm-arg`` value: JSON where it parses (numbers, true, {...}), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_args(pairs) -> dict:
    found = {}
    for pair in pairs or ():
        key, sep, value = str(pair).partition("=")
        if not sep or not key.strip():
            raise UserError(f"--slurm-arg takes KEY=VALUE, got {pair!r}")
        found[key.strip()] = _value(value)
    return found


def _read_toml(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            data = toml_reader().load(handle)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the Slurm settings {path}: {exc}") from None
    table = data.get("slurm", data)
    if not isinstance(table, dict):
        raise UserError(f"{path}: [slurm] must be a table")
    return table


#: setting -> (type converting a text or TOML value, SlurmSettings field)
_KEYS = {"partition": (str, "partition"), "account": (str, "account"), "qos": (str, "qos"),
         "time": (parse_time, "time_min"), "gpus": (int, "gpus"), "cpus": (int, "cpus"),
         "mem_gb": (float, "mem_gb"), "log_dir": (str, "log_dir"), "nodes": (int, "nodes"),
         "tasks_per_node": (int, "tasks_per_node")}


def settings_from(cli: dict, config_file: str | None = None,
                  environ: dict | None = None) -> SlurmSettings:
    """The settings from, last wins: a TOML file (``[slurm]``: partition, account, qos,
    time, gpus, cpus, mem_gb, log_dir, nodes, tasks_per_node, args = {...}; ``--slurm-config`` or
    ``$DEPTHSCAPE_SLURM_CONFIG``), ``$DEPTHSCAPE_SLURM_<KEY>``, then the command's options
    (``cli``: key -> value or None; ``args``: a list of KEY=VALUE)."""
    environ = os.environ if environ is None else environ
    values: dict = {}
    extra: dict = {}
    path = config_file or environ.get(ENV_PREFIX + "CONFIG")
    if path:
        table = _read_toml(path)
        unknown = set(table) - set(_KEYS) - {"args"}
        if unknown:
            raise UserError(f"{path}: unknown Slurm setting(s) {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in table.items() if k in _KEYS})
        extra.update(table.get("args") or {})
    values.update({k: environ[ENV_PREFIX + k.upper()] for k in _KEYS
                   if environ.get(ENV_PREFIX + k.upper())})
    extra.update(parse_args(environ.get(ENV_PREFIX + "ARGS", "").split()))
    values.update({k: v for k, v in cli.items() if k in _KEYS and v is not None})
    extra.update(parse_args(cli.get("args")))
    settings = SlurmSettings(args=extra, allow_node_local=bool(cli.get("allow_node_local")))
    for key, value in values.items():
        convert, name = _KEYS[key]
        try:
            setattr(settings, name, convert(value))
        except (TypeError, ValueError):
            raise UserError(f"Slurm setting {key}: not a valid value: {value!r}") from None
    if settings.cpus < 1 or settings.gpus < 0 or (settings.mem_gb is not None
                                                   and settings.mem_gb <= 0):
        raise UserError("Slurm CPUs per unit must be at least 1, GPUs at least 0, memory > 0")
    if settings.nodes < 1 or (settings.tasks_per_node is not None and settings.tasks_per_node < 1):
        raise UserError("Slurm nodes and tasks per node must be at least 1")
    return settings


def single_task(settings: SlurmSettings) -> SlurmSettings:
    """``settings`` for jobs of one task on one node (a study's units), refusing more."""
    if settings.nodes != 1 or (settings.tasks_per_node or 1) != 1:
        raise UserError("a study's units run one process each: Slurm nodes and tasks per node "
                        "apply to train, landscape and sharpness (--launcher slurm there)")
    return replace(settings, tasks_per_node=1)


# ---- checks before anything is submitted -----------------------------------------------


def node_local(path: Path) -> str | None:
    """The node-local folder ``path`` lies under (None: none of :data:`NODE_LOCAL`)."""
    resolved = str(Path(path).expanduser().resolve())
    for root in NODE_LOCAL:
        if resolved == root or resolved.startswith(root + "/"):
            return root
    return None


def check_launch(settings: SlurmSettings, config) -> None:
    """Every check a study's launch makes before it writes or submits anything."""
    check_settings(settings, {"output folder": config.out_dir, "data cache": config.cache_dir,
                              "job-log folder": settings.log_dir},
                   Path(config.out_dir) / jobs.SLURM_DIR / "check")


def check_settings(settings: SlurmSettings, shared: dict, folder: Path) -> None:
    """Every check a launch makes before it writes or submits anything; one line each.
    ``shared``: what -> path (None: none) that every node must see; ``folder``: where
    submitit's trial executor points (nothing is written there)."""
    if submitit is None:
        raise UserError("--launcher slurm needs submitit: pip install 'depthscape[cluster]'")
    if shutil.which("sbatch") is None:
        raise UserError("--launcher slurm needs Slurm's sbatch on PATH (none found); "
                        "run on a cluster's login node, or try bash scripts/local_slurm.sh")
    if not settings.allow_node_local:
        for what, path in shared.items():
            root = path and node_local(Path(path))
            if root:
                raise UserError(f"the {what} {path} is under {root}, which other nodes cannot "
                                "see: put it on shared storage (or pass "
                                "--slurm-allow-node-local on a one-node cluster)")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    try:
        executor.update_parameters(**settings.parameters("check"))
    except (ValueError, TypeError, NameError) as exc:  # NameError: an unknown parameter
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"submitit refuses the Slurm settings: {first[:300]}") from None
    _test_only(settings)


def _test_only(settings: SlurmSettings) -> None:
    """``sbatch --test-only`` with the jobs' partition, account, QoS, time and resources:
    Slurm's own judgement of them, submitting nothing."""
    command = ["sbatch", "--test-only", f"--time={settings.time_min}",
               f"--cpus-per-task={settings.cpus}", f"--nodes={settings.nodes}",
               f"--ntasks-per-node={settings.tasks}", "--wrap=true"]
    for flag, value in (("partition", settings.partition), ("account", settings.account),
                        ("qos", settings.qos)):
        if value:
            command.append(f"--{flag}={value}")
    if settings.mem_gb:
        command.append(f"--mem={max(1, int(settings.mem_gb * 1024))}M")
    if settings.gpus:
        command.append(f"--gpus-per-node={settings.gpus}")
    try:
        tried = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"sbatch --test-only failed: {exc}") from None
    if tried.returncode != 0:
        lines = [line for line in (tried.stderr + tried.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()] or lines or ["no reason"]
        reason = errors[-1].replace("sbatch: error: ", "").strip()
        raise UserError(f"Slurm refuses the job settings ({reason}); see --slurm-partition, "
                        "--slurm-account, --slurm-qos, --slurm-time and the resources asked for")


# ---- the job ------------------------------------------------------------------------------


